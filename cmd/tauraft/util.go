package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/tauraft/raft"
)

// shortID abbreviates a peer ID for humans: "12D3…abcd".
func shortID(id peer.ID) string {
	s := id.String()
	if len(s) <= 10 {
		return s
	}
	return s[:4] + "…" + s[len(s)-4:]
}

// parsePeerAddrs reads full p2p multiaddrs (".../p2p/<peer ID>") and groups
// them by peer, keeping the order in which peers first appear. flag names the
// option in error messages.
func parsePeerAddrs(flag string, addrs []string) ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	index := map[peer.ID]int{}
	for _, s := range addrs {
		m, err := multiaddr.NewMultiaddr(s)
		if err != nil {
			return nil, usageErr("--%s %q: %v", flag, s, err)
		}
		ai, err := peer.AddrInfoFromP2pAddr(m)
		if err != nil {
			return nil, usageErr("--%s %q: not a full /p2p/ address: %v", flag, s, err)
		}
		if i, ok := index[ai.ID]; ok {
			out[i].Addrs = append(out[i].Addrs, ai.Addrs...)
			continue
		}
		index[ai.ID] = len(out)
		out = append(out, *ai)
	}
	return out, nil
}

// readKeyFile returns the shared encryption key stored in path, used as is
// (every byte counts, a trailing newline included), or nil for an empty path.
func readKeyFile(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErr("--key-file: %v", err)
	}
	if len(key) < 32 {
		return nil, usageErr("--key-file %s: key has %d bytes, need at least 32", path, len(key))
	}
	return key, nil
}

// newLogger returns an hclog logger writing lines at level or above to w,
// stamped like every other line tauraft prints (raft.LogTimeFormat).
func newLogger(name string, level hclog.Level, w io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, Output: w, TimeFormat: raft.LogTimeFormat})
}

// stamp is the timestamp of a line tauraft prints on stdout, the same as
// on its log lines: "[2006-01-02T15:04:05.000Z07:00]".
func stamp(t time.Time) string { return "[" + t.Format(raft.LogTimeFormat) + "]" }

// maxNodeName bounds --name: it is printed on every log line.
const maxNodeName = 32

// checkNodeName accepts a --name of letters, digits and "-_.", at most
// maxNodeName long: it shows in every log line, so nothing that could
// break a line or pass for another field.
func checkNodeName(name string) error {
	if len(name) > maxNodeName {
		return usageErr("--name %q: at most %d characters", name, maxNodeName)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return usageErr("--name %q: use letters, digits, '-', '_' and '.' only", name)
		}
	}
	return nil
}

// plural returns "1 thing" or "n things".
func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}
