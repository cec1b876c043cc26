package raft

// Backups: a member that gives up its cluster to join another (split-cluster
// resolution, see merge.go) first writes its key-value data to a file, so a
// write that only the dropped cluster acknowledged is never lost: an operator
// can read it back (ReadBackup, or `tauraft kv restore`) and write what
// matters into the surviving cluster.

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// backupDir is where a member keeps the data it dropped: beside its
// snapshots, outside the directory a reset wipes.
func (c *cluster) backupDir() string {
	return c.snapDir + "-dropped"
}

// backupData writes the state machine's data, in the snapshot format, to a
// new file under dir (written, synced, then renamed into place) and returns
// its path.
func (f *kvStore) backupData(dir string, now time.Time) (string, error) {
	snap, err := f.Snapshot()
	if err != nil {
		return "", err
	}
	defer snap.Release()
	kv := snap.(*kvSnapshot)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("raft: backup directory: %w", err)
	}
	name := fmt.Sprintf("dropped-%s-index-%d.tauraft", now.UTC().Format("20060102T150405.000000000Z"), kv.Header.Applied)
	tmp, err := os.CreateTemp(dir, name+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("raft: backup file: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, there is nothing left to remove
	err = kv.writeTo(tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	path := filepath.Join(dir, name)
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("raft: write backup: %w", err)
	}
	return path, nil
}

// ReadBackup reads a file that a member wrote before it dropped its data to
// join another cluster (its path is in the member's WARN line "kept this
// member's data"), calling fn with every key and value, in key order. It
// stops at fn's first error.
func ReadBackup(r io.Reader, fn func(key string, value []byte) error) error {
	return readSnapshot(r, snapshotReader{
		header: func(snapshotHeader) error { return nil },
		pair:   func(p snapshotPair) error { return fn(p.Key, p.Value) },
	})
}
