package raft

// Writes of one session burst in one log entry. The leader's session reader
// holds the Sets and Deletes it reads while more frames wait, and proposes
// them together when the burst ends: one entry whose parts are the writes,
// each with its own meta operation (stamp and request ID) and its own
// answer. Raft's cost per entry (the log record, its replication and its
// decoding on every follower, the future) is then paid once per burst
// instead of once per write, which is most of what a write costs.
//
// What a caller can observe stays as it was, with one difference: the
// writes of a group share the entry's index. No two of them touch the same
// key (a write to a key already in the group closes the group first), so a
// key's ModIndex still names exactly one version of it, and a compare-and-
// set on it cannot miss a write. A retried write found in the request
// table is answered with its first result, whether it comes alone or in a
// group.

import (
	"fmt"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Bounds of a group: beyond either, the group is proposed and a new one
// starts. Every part is a request the peer has in flight, which admit
// bounds already (sessionRequestsPerPeer); maxGroupParts also bounds the
// answers one future carries.
const (
	maxGroupParts = 64
	// maxGroupBytes keeps a group well under MaxCommandSize: a part
	// costs its key, its value and at most groupPartOverhead more.
	maxGroupBytes     = MaxCommandSize / 2
	groupPartOverhead = 64 + metaSize
)

// collect holds request j for the session's group when the reader may start
// it itself; false: j is not such a write.
func (ss *serverSession) collect(j sessionJob) bool {
	fw, ok := ss.fastWriteOf(j)
	if !ok {
		return false
	}
	if ss.wouldOverflow(fw) {
		ss.flushGroup()
	}
	ss.hold(fw)
	return true
}

// groupPartSize is what fw adds to a group's size.
func groupPartSize(fw *fastWrite) int {
	return len(fw.op[0].key) + len(fw.op[0].value) + groupPartOverhead
}

// wouldOverflow tells whether the group must be proposed before fw joins
// it: fw writes a key the group writes already, or the group is at a bound.
func (ss *serverSession) wouldOverflow(fw *fastWrite) bool {
	_, dup := ss.groupKeys[string(fw.op[0].key)]
	return dup || len(ss.group) >= maxGroupParts || ss.groupSize+groupPartSize(fw) > maxGroupBytes
}

// hold adds fw to the group.
func (ss *serverSession) hold(fw *fastWrite) {
	if ss.groupKeys == nil {
		ss.groupKeys = make(map[string]struct{}, maxGroupParts)
	}
	ss.group = append(ss.group, fw)
	ss.groupKeys[string(fw.op[0].key)] = struct{}{}
	ss.groupSize += groupPartSize(fw)
}

// resetGroup empties the group and gives its requests back.
func (ss *serverSession) resetGroup() {
	for i, fw := range ss.group {
		putRequest(fw.req)
		ss.group[i] = nil
	}
	ss.group = ss.group[:0]
	clear(ss.groupKeys)
	ss.groupSize = 0
}

// flushGroup proposes the group held: one write as it is, several as one
// grouped entry. Writes that Raft did not take go to workers, which
// propose them one by one as they would any request.
func (ss *serverSession) flushGroup() {
	g := ss.group
	if len(g) == 0 {
		return
	}
	defer ss.resetGroup()
	var f hraft.ApplyFuture
	var start time.Time
	var err error
	if len(g) == 1 {
		f, start, err = ss.fast.proposeStart(g[0].op[:], g[0].id, g[0].timeout, true)
	} else {
		f, start, err = ss.fast.proposeGroupStart(g)
	}
	if err != nil {
		for _, fw := range g {
			ss.run(fw.j)
		}
		return
	}
	for i, fw := range g {
		part := i
		if len(g) == 1 {
			part = -1
		}
		ss.begin(fw, f, start, part)
	}
}

// proposeGroupStart hands writes to Raft as one grouped entry, as
// proposeStart with quick would hand each: it fails rather than wait for
// the voters' operation kinds, and when a voter does not know grouped
// entries or meta operations (the caller then proposes them one by one).
// Raft's enqueue timeout is the shortest of theirs; each write keeps its
// own deadline for its answer.
func (c *cluster) proposeGroupStart(writes []*fastWrite) (hraft.ApplyFuture, time.Time, error) {
	run, err := c.leaderRun()
	if err != nil {
		return nil, time.Time{}, err
	}
	ops := make([]cmdOp, 0, 3*len(writes))
	metas := make([]byte, 0, metaSize*len(writes))
	stamp := c.now().UnixNano()
	timeout := writes[0].timeout
	for i, fw := range writes {
		if i > 0 {
			ops = append(ops, cmdOp{kind: opNext})
		}
		m := len(metas)
		metas = appendMeta(metas, stamp, fw.id)
		ops = append(ops, cmdOp{kind: opMeta, value: metas[m:len(metas):len(metas)]}, fw.op[0])
		timeout = min(timeout, fw.timeout)
	}
	meta, known, err := c.kindsKnown(run.raft, ops)
	switch {
	case err != nil:
		return nil, time.Time{}, err
	case !known:
		return nil, time.Time{}, errKindsUnknown
	case !meta:
		return nil, time.Time{}, fmt.Errorf("%w: a voter does not know meta operations", errKindsUnknown)
	}
	cmd := encodeOps(ops)
	if err := checkSize("command", len(cmd), MaxCommandSize); err != nil {
		return nil, time.Time{}, err
	}
	start := c.metrics.start()
	return run.apply(cmd, timeout), start, nil
}

// partOf is the answer of part of a grouped entry (part -1: the entry's
// own answer). An entry the store refused whole (it stopped) answers every
// part with its error.
func partOf(resp FSMResponse, part int) FSMResponse {
	switch {
	case part < 0 || resp.Error != nil:
		return resp
	case part >= len(resp.parts):
		return FSMResponse{Error: fmt.Errorf("raft: a grouped entry answered %d parts, not part %d", len(resp.parts), part)}
	}
	return resp.parts[part]
}
