package raft

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// btPair is one key and value read back from a backup.
type btPair struct {
	key   string
	value []byte
}

// btReadFile reads a backup file with ReadBackup.
func btReadFile(t *testing.T, path string) ([]btPair, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []btPair
	err = ReadBackup(f, func(key string, value []byte) error {
		out = append(out, btPair{key, bytes.Clone(value)})
		return nil
	})
	return out, err
}

// btStore is a kvStore over pebble (whose queries are in key order, like
// the p2pnode store a member runs on) at prefix.
func btStore(t *testing.T, prefix string) *kvStore {
	t.Helper()
	ds := storeTestOpenPebble(t, t.TempDir())
	t.Cleanup(func() {
		if err := ds.Close(); err != nil {
			t.Errorf("close pebble: %v", err)
		}
	})
	kv, err := newKVStore(ds, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// backupData writes exactly the applied keys and values, empty values and
// keys that are not UTF-8 or look like paths included, in key order, to one
// complete file named after the applied index, with no temporary file left
// behind; the state machine's data is untouched.
func TestBackupDataRoundTrip(t *testing.T) {
	kv := btStore(t, "/raft/bt/data")
	// A nested namespace's data lives under ours: it is not ours to back up.
	nested, err := newKVStore(kv.ds, "/raft/bt/data/inner/data")
	if err != nil {
		t.Fatal(err)
	}
	ftApplyOK(t, nested, ftSets(t, 1, "nested"))

	want := map[string][]byte{
		"plain":                         []byte("value"),
		"empty":                         {},
		"\xff\xfe\x00bin":               []byte("not utf-8 key"),
		"\x00":                          []byte("nul key"),
		"a/b":                           []byte("slash"),
		"a//b":                          []byte("double slash"),
		"../x":                          []byte("dot dot"),
		"_applied":                      []byte("not the index"),
		"binary-value":                  {0x00, 0xff, 0x80, 0x0a},
		strings.Repeat("k", MaxKeySize): []byte("longest key"),
	}
	var logs []*hraft.Log
	idx := uint64(0)
	for k, v := range want {
		idx++
		logs = append(logs, ftLog(t, idx, SetOp(k, v)))
	}
	// Overwritten and deleted keys show with their last state only.
	idx++
	logs = append(logs, ftLog(t, idx, SetOp("plain", []byte("old")), SetOp("gone", []byte("x"))))
	idx++
	logs = append(logs, ftLog(t, idx, SetOp("plain", want["plain"]), DeleteOp("gone")))
	idx++
	logs = append(logs, &hraft.Log{Index: idx, Term: 1, Type: hraft.LogNoop})
	ftApplyOK(t, kv, logs)
	applied := kv.appliedIndex()

	dir := filepath.Join(t.TempDir(), "snaps-dropped")
	now := time.Date(2026, 1, 27, 10, 0, 0, 123456789, time.FixedZone("x", 3600))
	path, err := kv.backupData(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(path) != dir {
		t.Fatalf("backup %s is not in %s", path, dir)
	}
	wantName := fmt.Sprintf("dropped-20260127T090000.123456789Z-index-%d.tauraft", applied)
	if filepath.Base(path) != wantName {
		t.Fatalf("backup named %s, want %s", filepath.Base(path), wantName)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != wantName {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("backup directory holds %q, want only %s", names, wantName)
	}

	got, err := btReadFile(t, path)
	if err != nil {
		t.Fatal(err)
	}
	var gotKeys []string
	for _, p := range got {
		gotKeys = append(gotKeys, p.key)
		w, ok := want[p.key]
		if !ok {
			t.Fatalf("backup holds %q, which was not applied (or was deleted)", p.key)
		}
		if !bytes.Equal(p.value, w) {
			t.Fatalf("backup holds %q = %x, want %x", p.key, p.value, w)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("backup holds %d keys, want %d", len(got), len(want))
	}
	if !slices.IsSorted(gotKeys) {
		t.Fatalf("backup keys are not in key order: %q", gotKeys)
	}

	// The backup is a copy: the store still holds everything.
	for k, w := range want {
		if v, ok, err := kv.get(k); err != nil || !ok || !bytes.Equal(v, w) {
			t.Fatalf("after the backup the store has %q = %x, %v, %v", k, v, ok, err)
		}
	}
	if kv.appliedIndex() != applied {
		t.Fatal("the backup moved the applied index")
	}

	// A second backup is a second file.
	path2, err := kv.backupData(dir, now.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if path2 == path {
		t.Fatal("a second backup overwrote the first")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Fatalf("%d files after two backups", len(entries))
	}
}

// ReadBackup fails on a file cut short anywhere, and stops at the first error
// of its callback.
func TestBackupReadErrors(t *testing.T) {
	kv := btStore(t, "/raft/bt/data")
	var logs []*hraft.Log
	for i := range 5 {
		logs = append(logs, ftLog(t, uint64(i+1), SetOp(fmt.Sprintf("k%d", i), bytes.Repeat([]byte{byte(i)}, 10*i))))
	}
	ftApplyOK(t, kv, logs)
	path, err := kv.backupData(t.TempDir(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if pairs, err := btReadFile(t, path); err != nil || len(pairs) != 5 {
		t.Fatalf("full file: %d pairs, %v", len(pairs), err)
	}

	for cut := 0; cut < len(full); cut++ {
		n := 0
		err := ReadBackup(bytes.NewReader(full[:cut]), func(string, []byte) error { n++; return nil })
		if err == nil {
			t.Fatalf("file cut to %d of %d bytes read without error (%d pairs)", cut, len(full), n)
		}
		if n >= 5 {
			t.Fatalf("file cut to %d of %d bytes gave all %d pairs", cut, len(full), n)
		}
	}

	stop := errors.New("enough")
	n := 0
	err = ReadBackup(bytes.NewReader(full), func(string, []byte) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 2 {
		t.Fatalf("callback error: ReadBackup returned %v after %d pairs", err, n)
	}
}

// A backup that cannot be written fails and leaves nothing behind.
func TestBackupDataWriteFails(t *testing.T) {
	kv := btStore(t, "/raft/bt/data")
	ftApplyOK(t, kv, ftSets(t, 1, "a"))
	parent := t.TempDir()
	blocker := filepath.Join(parent, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if path, err := kv.backupData(filepath.Join(blocker, "dir"), time.Now()); err == nil {
		t.Fatalf("backup under a file succeeded: %s", path)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 {
		t.Fatalf("a failed backup left %d entries", len(entries))
	}
}
