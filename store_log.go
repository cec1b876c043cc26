package raft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
	datastore "github.com/ipfs/go-datastore"
	dsq "github.com/ipfs/go-datastore/query"
)

// errCorruptLog is wrapped by every decodeLog failure so callers can tell a
// damaged entry apart from an I/O error with errors.Is.
var errCorruptLog = errors.New("raft: corrupt log entry")

// logEncodingV1 is the only encoding version written today. The byte is kept
// in every entry so the format can evolve without a migration of old logs.
const logEncodingV1 byte = 1

// logKeyHexDigits is the fixed width of the index segment. A fixed width makes
// the lexicographic key order equal to the numeric index order.
const logKeyHexDigits = 16

// logSpan is an inclusive run [lo, hi] of indexes present in the store.
type logSpan struct {
	lo, hi uint64
}

// LogStore is a hashicorp/raft LogStore persisted in a go-datastore under a
// key prefix, so several raft groups (and unrelated data) can share one
// datastore.
//
// The set of stored indexes is kept in memory as a short list of contiguous
// runs, loaded once when the store is opened. That keeps FirstIndex and
// LastIndex free of datastore round trips (raft calls them constantly), lets
// DeleteRange touch only keys that exist, and stays exact when raft leaves a
// gap in the log (it does so on purpose after a snapshot install or a user
// restore, because this store is not a MonotonicLogStore).
//
// Durability is whatever the datastore's Batch.Commit provides; for example,
// go-ds-pebble commits with pebble.NoSync unless configured otherwise.
type LogStore struct {
	ds     datastore.Batching
	prefix string

	// writeMu serialises mutations so the datastore and the in-memory runs
	// are updated in the same order, without holding mu (and so blocking
	// readers) during a slow batch commit.
	writeMu sync.Mutex

	// mu guards spans.
	mu sync.RWMutex
	// spans is sorted, non-overlapping and non-adjacent; empty means no logs.
	spans []logSpan
}

var _ hraft.LogStore = (*LogStore)(nil)

// NewLogStore opens the log stored under prefix (a clean key path such as
// "/raft/cron/log", without a trailing slash) in ds. It scans the keys under
// the prefix once, so opening costs time proportional to the stored log;
// afterwards no operation scans.
//
// Only keys of the exact form prefix + "/" + 16 lowercase hex digits are
// treated as log entries; anything else under the prefix (for example a
// nested namespace such as prefix + "/log/...") is ignored.
func NewLogStore(ds datastore.Batching, prefix string) (*LogStore, error) {
	if ds == nil {
		return nil, errors.New("raft: NewLogStore: nil datastore")
	}
	if prefix == "" || prefix[0] != '/' || strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("raft: NewLogStore: invalid prefix %q: want a clean path like /raft/name/log", prefix)
	}
	if clean := datastore.NewKey(prefix).String(); clean != prefix {
		return nil, fmt.Errorf("raft: NewLogStore: prefix %q is not a clean key path (cleaned: %q)", prefix, clean)
	}
	s := &LogStore{ds: ds, prefix: prefix}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// load rebuilds the in-memory runs from a keys-only scan of the prefix.
func (s *LogStore) load() error {
	ctx := context.Background()
	res, err := s.ds.Query(ctx, dsq.Query{Prefix: s.prefix, KeysOnly: true})
	if err != nil {
		return fmt.Errorf("raft: scanning log keys under %s: %w", s.prefix, err)
	}
	// Close stops the producer goroutine of datastores that stream results.
	defer res.Close()

	var idxs []uint64
	for {
		r, ok := res.NextSync()
		if !ok {
			break
		}
		if r.Error != nil {
			return fmt.Errorf("raft: scanning log keys under %s: %w", s.prefix, r.Error)
		}
		if idx, ok := s.parseKey(r.Key); ok {
			idxs = append(idxs, idx)
		}
	}
	// Datastores do not promise an order (the map datastore has none), and
	// pdqsort is linear on the already-sorted output of ordered stores.
	slices.Sort(idxs)
	s.spans = spansFromSorted(idxs)
	return nil
}

// parseKey returns the index encoded in key if, and only if, key is exactly
// prefix + "/" + 16 lowercase hex digits.
func (s *LogStore) parseKey(key string) (uint64, bool) {
	if len(key) != len(s.prefix)+1+logKeyHexDigits ||
		!strings.HasPrefix(key, s.prefix) || key[len(s.prefix)] != '/' {
		return 0, false
	}
	var idx uint64
	for _, c := range []byte(key[len(s.prefix)+1:]) {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, false
		}
		idx = idx<<4 | uint64(d)
	}
	return idx, true
}

// key builds the datastore key of idx. RawKey is used because the prefix is
// already clean and NewKey would pay for a path.Clean on every entry.
func (s *LogStore) key(idx uint64) datastore.Key {
	const digits = "0123456789abcdef"
	var hexIdx [logKeyHexDigits]byte
	for i := len(hexIdx) - 1; i >= 0; i-- {
		hexIdx[i] = digits[idx&0xf]
		idx >>= 4
	}
	// strings.Builder hands its buffer over without a copy: one allocation.
	var sb strings.Builder
	sb.Grow(len(s.prefix) + 1 + logKeyHexDigits)
	sb.WriteString(s.prefix)
	sb.WriteByte('/')
	sb.Write(hexIdx[:])
	return datastore.RawKey(sb.String())
}

// FirstIndex returns the lowest stored index, or 0 when the log is empty. It
// never touches the datastore.
func (s *LogStore) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.spans) == 0 {
		return 0, nil
	}
	return s.spans[0].lo, nil
}

// LastIndex returns the highest stored index, or 0 when the log is empty. It
// never touches the datastore.
func (s *LogStore) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.spans) == 0 {
		return 0, nil
	}
	return s.spans[len(s.spans)-1].hi, nil
}

// has reports whether idx is known to be stored.
func (s *LogStore) has(idx uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := sort.Search(len(s.spans), func(i int) bool { return s.spans[i].hi >= idx })
	return i < len(s.spans) && s.spans[i].lo <= idx
}

// GetLog loads the entry at index into log. It returns hraft.ErrLogNotFound,
// unwrapped, when the entry is absent, because raft compares that error with
// == rather than errors.Is.
func (s *LogStore) GetLog(index uint64, log *hraft.Log) error {
	// Indexes outside the known runs are answered from memory; raft probes
	// for missing entries routinely (e.g. a follower far behind).
	if !s.has(index) {
		return hraft.ErrLogNotFound
	}
	val, err := s.ds.Get(context.Background(), s.key(index))
	if err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			// Deleted concurrently, between the check above and the read.
			return hraft.ErrLogNotFound
		}
		return fmt.Errorf("raft: reading log %d: %w", index, err)
	}
	if err := decodeLog(val, log); err != nil {
		return fmt.Errorf("raft: log %d: %w", index, err)
	}
	return nil
}

// StoreLog stores a single entry; see StoreLogs.
func (s *LogStore) StoreLog(log *hraft.Log) error {
	return s.StoreLogs([]*hraft.Log{log})
}

// StoreLogs writes all entries in one datastore batch so that, on datastores
// with atomic batches, raft never observes a partially written append. An
// existing entry with the same index is overwritten. Entries need not be
// contiguous with the stored log (raft leaves gaps after snapshot installs).
func (s *LogStore) StoreLogs(logs []*hraft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	for i, l := range logs {
		if l == nil {
			return fmt.Errorf("raft: StoreLogs: nil log at position %d", i)
		}
	}

	s.writeMu.Lock()
	defer s.writeMu.Unlock()

	ctx := context.Background()
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return fmt.Errorf("raft: opening log batch: %w", err)
	}
	for _, l := range logs {
		if err := b.Put(ctx, s.key(l.Index), encodeLog(l)); err != nil {
			return fmt.Errorf("raft: storing log %d: %w", l.Index, err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("raft: committing %d logs: %w", len(logs), err)
	}

	s.mu.Lock()
	for _, l := range logs {
		s.spans = spansAdd(s.spans, l.Index)
	}
	s.mu.Unlock()
	return nil
}

// DeleteRange deletes the entries in [minIdx, maxIdx] (inclusive) in one
// datastore batch. Only indexes that are actually stored are visited, so a
// range far larger than the log (raft may ask for one after a snapshot
// install) costs no more than the entries it removes.
func (s *LogStore) DeleteRange(minIdx, maxIdx uint64) error {
	if minIdx > maxIdx {
		return nil
	}

	s.writeMu.Lock()
	defer s.writeMu.Unlock()

	// Only writers modify spans and writeMu is held, so reading without mu
	// is safe here.
	var victims []logSpan
	for _, sp := range s.spans {
		if sp.hi < minIdx || sp.lo > maxIdx {
			continue
		}
		victims = append(victims, logSpan{lo: max(sp.lo, minIdx), hi: min(sp.hi, maxIdx)})
	}
	if len(victims) == 0 {
		return nil
	}

	ctx := context.Background()
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return fmt.Errorf("raft: opening log batch: %w", err)
	}
	for _, v := range victims {
		for idx := v.lo; ; idx++ {
			if err := b.Delete(ctx, s.key(idx)); err != nil {
				return fmt.Errorf("raft: deleting log %d: %w", idx, err)
			}
			if idx == v.hi { // checked before ++ so hi == MaxUint64 cannot wrap
				break
			}
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("raft: committing delete of logs [%d, %d]: %w", minIdx, maxIdx, err)
	}

	s.mu.Lock()
	s.spans = spansRemove(s.spans, minIdx, maxIdx)
	s.mu.Unlock()
	return nil
}

// spansFromSorted turns ascending (possibly repeated) indexes into runs.
func spansFromSorted(idxs []uint64) []logSpan {
	var out []logSpan
	for _, idx := range idxs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if idx <= last.hi {
				continue
			}
			if idx == last.hi+1 { // idx > last.hi, so hi+1 cannot wrap
				last.hi = idx
				continue
			}
		}
		out = append(out, logSpan{lo: idx, hi: idx})
	}
	return out
}

// spansAdd inserts idx, merging with neighbouring runs. Appending right after
// the last run, which is what raft does almost always, is O(1).
func spansAdd(spans []logSpan, idx uint64) []logSpan {
	n := len(spans)
	if n > 0 {
		last := &spans[n-1]
		if idx >= last.lo && idx <= last.hi {
			return spans
		}
		if last.hi != math.MaxUint64 && idx == last.hi+1 {
			last.hi = idx
			return spans
		}
	}
	// First run whose hi+1 >= idx, i.e. that contains idx or ends just before it.
	i := sort.Search(n, func(i int) bool { return spans[i].hi >= idx || spans[i].hi+1 == idx })
	if i < n && spans[i].lo <= idx && idx <= spans[i].hi {
		return spans
	}
	if i < n && spans[i].hi != math.MaxUint64 && spans[i].hi+1 == idx {
		spans[i].hi = idx
		if i+1 < n && spans[i+1].lo == idx+1 {
			spans[i].hi = spans[i+1].hi
			spans = slices.Delete(spans, i+1, i+2)
		}
		return spans
	}
	// Here every run before i ends before idx-1 and run i (if any) starts after idx.
	if i < n && idx != math.MaxUint64 && spans[i].lo == idx+1 {
		spans[i].lo = idx
		return spans
	}
	return slices.Insert(spans, i, logSpan{lo: idx, hi: idx})
}

// spansRemove removes [lo, hi] (lo <= hi) from the runs, splitting a run
// when the range falls strictly inside it.
func spansRemove(spans []logSpan, lo, hi uint64) []logSpan {
	out := make([]logSpan, 0, len(spans)+1)
	for _, sp := range spans {
		if sp.hi < lo || sp.lo > hi {
			out = append(out, sp)
			continue
		}
		if sp.lo < lo { // so lo > 0
			out = append(out, logSpan{lo: sp.lo, hi: lo - 1})
		}
		if sp.hi > hi { // so hi < MaxUint64
			out = append(out, logSpan{lo: hi + 1, hi: sp.hi})
		}
	}
	return out
}

// encodeLog serialises l in the version-1 layout:
//
//	version byte | uvarint Index | uvarint Term | Type byte |
//	uvarint len(Data) | Data | uvarint len(Extensions) | Extensions |
//	varint AppendedAt.UnixNano() (0 for the zero time)
//
// It is hand-written because it runs for every entry raft persists; the
// output is canonical, so decode followed by encode reproduces the input.
// AppendedAt outside the UnixNano range (years 1678-2262) does not round-trip,
// and exactly the Unix epoch decodes as the zero time; raft only stores
// time.Now() there.
func encodeLog(l *hraft.Log) []byte {
	var ts int64
	if !l.AppendedAt.IsZero() {
		ts = l.AppendedAt.UnixNano()
	}
	size := 1 + uvarintLen(l.Index) + uvarintLen(l.Term) + 1 +
		uvarintLen(uint64(len(l.Data))) + len(l.Data) +
		uvarintLen(uint64(len(l.Extensions))) + len(l.Extensions) +
		varintLen(ts)
	b := make([]byte, 0, size)
	b = append(b, logEncodingV1)
	b = binary.AppendUvarint(b, l.Index)
	b = binary.AppendUvarint(b, l.Term)
	b = append(b, byte(l.Type))
	b = binary.AppendUvarint(b, uint64(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	b = binary.AppendVarint(b, ts)
	return b
}

// decodeLog parses an encodeLog output into out. It rejects anything that is
// not exactly a canonical encoding (truncation, trailing bytes, overlong
// varints, unknown version) with an error wrapping errCorruptLog, and leaves
// out untouched on error. Data and Extensions are copied, so out never
// aliases buf (an in-memory datastore hands out its stored slice).
func decodeLog(buf []byte, out *hraft.Log) error {
	d := logDecoder{buf: buf}
	version, ok := d.readByte()
	if !ok {
		return fmt.Errorf("%w: empty", errCorruptLog)
	}
	if version != logEncodingV1 {
		return fmt.Errorf("%w: unsupported encoding version %d", errCorruptLog, version)
	}
	index := d.uvarint("index")
	term := d.uvarint("term")
	typ, ok := d.readByte()
	if !ok && d.err == nil {
		d.fail("type: truncated")
	}
	dataLen := d.length("data")
	dataStart := d.off
	d.off += dataLen
	extLen := d.length("extensions")
	extStart := d.off
	d.off += extLen
	ts := d.varint("appended-at")
	if d.err != nil {
		return d.err
	}
	if d.off != len(buf) {
		return fmt.Errorf("%w: %d trailing bytes", errCorruptLog, len(buf)-d.off)
	}

	var data, ext []byte
	if dataLen+extLen > 0 {
		// One allocation for both; the 3-index slices stop an append to one
		// from overwriting the other.
		backing := make([]byte, dataLen+extLen)
		copy(backing, buf[dataStart:dataStart+dataLen])
		copy(backing[dataLen:], buf[extStart:extStart+extLen])
		if dataLen > 0 {
			data = backing[:dataLen:dataLen]
		}
		if extLen > 0 {
			ext = backing[dataLen:]
		}
	}
	var appendedAt time.Time
	if ts != 0 {
		appendedAt = time.Unix(0, ts)
	}
	*out = hraft.Log{
		Index:      index,
		Term:       term,
		Type:       hraft.LogType(typ),
		Data:       data,
		Extensions: ext,
		AppendedAt: appendedAt,
	}
	return nil
}

// logDecoder is a cursor over an encoded entry that records the first error
// and turns every later read into a no-op, keeping decodeLog linear.
type logDecoder struct {
	buf []byte
	off int
	err error
}

func (d *logDecoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errCorruptLog, what)
	}
}

func (d *logDecoder) readByte() (byte, bool) {
	if d.err != nil || d.off >= len(d.buf) {
		return 0, false
	}
	c := d.buf[d.off]
	d.off++
	return c, true
}

func (d *logDecoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf[d.off:])
	if n <= 0 {
		d.fail(field + ": truncated or overflowing varint")
		return 0
	}
	if n != uvarintLen(v) {
		d.fail(field + ": non-canonical varint")
		return 0
	}
	d.off += n
	return v
}

func (d *logDecoder) varint(field string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf[d.off:])
	if n <= 0 {
		d.fail(field + ": truncated or overflowing varint")
		return 0
	}
	if n != varintLen(v) {
		d.fail(field + ": non-canonical varint")
		return 0
	}
	d.off += n
	return v
}

// length reads a byte-string length and checks it against the bytes left,
// so a corrupt length can never drive an allocation or an out-of-range slice.
func (d *logDecoder) length(field string) int {
	v := d.uvarint(field + " length")
	if d.err != nil {
		return 0
	}
	if v > uint64(len(d.buf)-d.off) {
		d.fail(fmt.Sprintf("%s: length %d exceeds remaining %d bytes", field, v, len(d.buf)-d.off))
		return 0
	}
	return int(v)
}

// uvarintLen is the number of bytes binary.AppendUvarint writes for v.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// varintLen is the number of bytes binary.AppendVarint writes for v.
func varintLen(v int64) int {
	ux := uint64(v) << 1
	if v < 0 {
		ux = ^ux
	}
	return uvarintLen(ux)
}
