package p2pnode

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// NewIdentity returns a fresh Ed25519 private key, the key type New uses when
// Config.PrivKey is nil.
func NewIdentity() (crypto.PrivKey, error) {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("p2pnode: generate ed25519 key: %w", err)
	}
	return priv, nil
}

// LoadOrCreateIdentity returns the private key stored at path, creating and
// persisting a new Ed25519 key there (mode 0600, parent directories 0700) if
// the file does not exist yet.
//
// The peer ID is derived from this key, and raft cluster membership is keyed by
// peer ID, so a node that keeps its data across restarts must also keep its key:
// pass the result as Config.PrivKey. Keep the file next to Config.DataDir rather
// than inside it, so the datastore directory holds only datastore files.
//
// The key is written to a temporary file, fsynced and renamed into place, so a
// crash never leaves a truncated key behind that would silently change the
// node's identity on the next start.
func LoadOrCreateIdentity(path string) (crypto.PrivKey, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		priv, err := crypto.UnmarshalPrivateKey(data)
		if err != nil {
			return nil, fmt.Errorf("p2pnode: decode identity %s: %w", path, err)
		}
		return priv, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("p2pnode: read identity: %w", err)
	}

	priv, err := NewIdentity()
	if err != nil {
		return nil, err
	}
	data, err = crypto.MarshalPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("p2pnode: encode identity: %w", err)
	}
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return nil, fmt.Errorf("p2pnode: write identity: %w", err)
	}
	return priv, nil
}

// writeFileAtomic writes data to path via a temporary file in the same
// directory followed by a rename, and fsyncs the directory so the rename
// itself survives a power loss.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
