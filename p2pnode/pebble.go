package p2pnode

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ipfs/go-datastore"
	pebbleds "github.com/ipfs/go-ds-pebble"
)

// diskSlowThreshold is pebble's own default for reporting a slow disk
// operation.
const diskSlowThreshold = 5 * time.Second

// pebbleStore is a go-ds-pebble datastore that also owns the disk-health
// checking filesystem wrapper it runs on. Embedding the pointer keeps every
// optional datastore interface (PersistentDatastore, ...) of the original.
type pebbleStore struct {
	*pebbleds.Datastore
	fsCloser io.Closer
	// unsynced is a second handle on the same pebble database whose writes
	// are not fsynced (see Unsynced). It is never closed itself: closing it
	// would close the shared database.
	unsynced *pebbleds.Datastore
}

// openPebble opens a pebble datastore in dir whose writes are all fsynced.
//
// Two things differ from pebbleds.NewDatastore(dir) with default options:
//
//   - go-ds-pebble writes with pebble.NoSync unless told otherwise: a write
//     acknowledged to raft could then vanish on power loss, and raft's safety
//     rests on votes and log entries being durable once written.
//   - pebble normally wraps its filesystem in a disk-health checker whose
//     ticker goroutine it only stops in DB.Close, so a failed Open (e.g. a
//     directory locked by another process) would leak it. The wrapper is
//     created here instead, and closed by whoever ends up owning it.
func openPebble(dir string) (*pebbleStore, error) {
	opts := &pebble.Options{}
	fs, fsCloser := vfs.WithDiskHealthChecks(vfs.Default, diskSlowThreshold, nil, func(info vfs.DiskSlowInfo) {
		// Same reporting as pebble's default: through the event listener,
		// which go-ds-pebble points at its logger before opening.
		if opts.EventListener != nil && opts.EventListener.DiskSlow != nil {
			opts.EventListener.DiskSlow(info)
		}
	})
	opts.FS = fs
	ds, err := pebbleds.NewDatastore(dir,
		pebbleds.WithPebbleOpts(opts),
		pebbleds.WithPebbleWriteOptions(pebble.Sync),
	)
	if err != nil {
		_ = fsCloser.Close()
		return nil, fmt.Errorf("p2pnode: open pebble datastore %s: %w", dir, err)
	}
	unsynced, err := pebbleds.NewDatastore("", pebbleds.WithPebbleDB(ds.DB), pebbleds.WithPebbleWriteOptions(pebble.NoSync))
	if err != nil {
		_ = ds.Close()
		_ = fsCloser.Close()
		return nil, fmt.Errorf("p2pnode: pebble datastore %s: %w", dir, err)
	}
	return &pebbleStore{Datastore: ds, fsCloser: fsCloser, unsynced: unsynced}, nil
}

// Unsynced is the same database written without fsync, for data that can be
// rebuilt from the synced Raft log (raft.UnsyncedStore). Pebble writes both
// handles through one write-ahead log, in order, so a later synced write
// makes every earlier unsynced one durable too.
func (s *pebbleStore) Unsynced() datastore.Batching { return s.unsynced }

// Close closes the datastore, then the filesystem wrapper it was using.
func (s *pebbleStore) Close() error {
	return errors.Join(s.Datastore.Close(), s.fsCloser.Close())
}
