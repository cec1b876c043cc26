package p2pnode

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/libp2p/go-libp2p/core/pnet"
)

// ErrInvalidSwarmKey is wrapped by every error about the contents of a swarm
// key (a key file that cannot be read is reported with the os error instead).
var ErrInvalidSwarmKey = errors.New("invalid swarm key")

// swarmKeyHeader is the first line of a swarm key file.
const swarmKeyHeader = "/key/swarm/psk/1.0.0/"

// NewSwarmKey returns a fresh random swarm key in the standard file format of
// libp2p private networks (the one IPFS and Taubyte use):
//
//	/key/swarm/psk/1.0.0/
//	/base16/
//	<64 hex digits>
//
// followed by a newline. Every node of a private network needs the same key
// (see Config.SwarmKey); keep the file secret, like a password.
func NewSwarmKey() ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("p2pnode: generate swarm key: %w", err)
	}
	return []byte(swarmKeyHeader + "\n/base16/\n" + hex.EncodeToString(key) + "\n"), nil
}

// ParseSwarmKey decodes a swarm key file's contents (see NewSwarmKey) with
// go-libp2p's pnet.DecodeV1PSK, which also accepts the /base64/ and /bin/
// encodings. It is stricter than DecodeV1PSK about base16 and base64 keys:
// the key must be exactly 32 bytes, with nothing but white space after it,
// so that a truncated or mangled copy is an error rather than a different
// network. Errors wrap ErrInvalidSwarmKey.
func ParseSwarmKey(data []byte) (pnet.PSK, error) {
	psk, err := parseSwarmKey(data)
	if err != nil {
		return nil, fmt.Errorf("p2pnode: %w", err)
	}
	return psk, nil
}

func parseSwarmKey(data []byte) (pnet.PSK, error) {
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(data))
	if err != nil {
		return nil, swarmKeyErr(data, err)
	}
	lines := strings.SplitN(string(data), "\n", 3)
	if len(lines) == 3 {
		body := strings.TrimSpace(lines[2])
		switch strings.TrimRight(lines[1], "\r") {
		case "/base16/":
			if len(body) != hex.EncodedLen(len(psk)) {
				return nil, fmt.Errorf("%w: want %d hex digits after /base16/, got %d characters",
					ErrInvalidSwarmKey, hex.EncodedLen(len(psk)), len(body))
			}
		case "/base64/":
			if raw, err := base64.StdEncoding.DecodeString(body); err != nil || len(raw) != len(psk) {
				return nil, fmt.Errorf("%w: want the base64 encoding of %d bytes after /base64/", ErrInvalidSwarmKey, len(psk))
			}
		}
	}
	return psk, nil
}

// swarmKeyErr explains why DecodeV1PSK refused data.
func swarmKeyErr(data []byte, err error) error {
	first, _, _ := strings.Cut(string(data), "\n")
	if strings.TrimRight(first, "\r") != swarmKeyHeader {
		// Not DecodeV1PSK's error, which quotes the line: the file may be
		// some other secret given by mistake.
		return fmt.Errorf("%w: the first line is not %q (make a key file with 'tauraft swarm-key' or ipfs-swarm-key-gen)",
			ErrInvalidSwarmKey, swarmKeyHeader)
	}
	return fmt.Errorf("%w: want an encoding line (/base16/, /base64/ or /bin/) and a 32-byte key after the first line: %v",
		ErrInvalidSwarmKey, err)
}

// ReadSwarmKeyFile reads and parses the swarm key file at path (see
// ParseSwarmKey). The error names the file.
func ReadSwarmKeyFile(path string) (pnet.PSK, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("p2pnode: read swarm key: %w", err)
	}
	psk, err := parseSwarmKey(data)
	if err != nil {
		return nil, fmt.Errorf("p2pnode: swarm key file %s: %w", path, err)
	}
	return psk, nil
}
