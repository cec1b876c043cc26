package raft

// The rpcGuard's request scanner: a resumable state machine over the bytes
// of inbound Raft requests, which checks each request's header as it passes
// (see rpcguard.go for what is checked and why).

// scanBuffered scans buf[scan:end] as far as it can and reports whether it
// made progress: scanned bytes, or changed phase (refused, or reached the
// end of the stream).
func (g *rpcGuard) scanBuffered() bool {
	start, phase := g.scan, g.phase
	for g.scan < g.end {
		b := g.buf[g.scan:g.end]
		var n int
		switch {
		case g.phase == phaseType:
			n = g.scanType(b[0])
		case g.phase == phaseValue && g.left > 0:
			n = g.scanBody(b)
		case g.phase == phaseValue:
			n = g.scanHead(b)
		case g.phase == phaseSnapshot:
			n = g.scanSnapshot(b)
		}
		// 0: refused, past the end, or a msgpack head cut short.
		if n == 0 {
			break
		}
		g.scan += n
	}
	return g.scan != start || g.phase != phase
}

// scanType takes the type byte of a request and asks admit about it. It
// returns 1, or 0 when it refuses the request.
func (g *rpcGuard) scanType(t byte) int {
	g.rpcType = t
	if t > rpcTypeRequestPreVote {
		g.refuse("unknown request type", nil)
		return 0
	}
	if g.admit != nil {
		if err := g.admit(t, g.remote); err != nil {
			g.refuse("peer not admitted", err)
			return 0
		}
	}
	g.phase = phaseValue
	g.left, g.use, g.depth, g.role = 0, bodySkip, 0, roleOther
	g.sawID, g.sawAddr, g.sawSize, g.size = false, false, false, 0
	return 1
}

// scanSnapshot passes InstallSnapshot data through.
func (g *rpcGuard) scanSnapshot(b []byte) int {
	n := min(uint64(len(b)), g.left)
	g.left -= n
	if g.left == 0 {
		g.phase = phaseEnd
	}
	return int(n)
}

// scanHead takes the head of the next msgpack item of a request value. It
// returns the head's length, or 0 when b does not hold all of it yet or the
// item is refused.
func (g *rpcGuard) scanHead(b []byte) int {
	h, ok := parseHead(b)
	if !ok {
		return 0
	}
	if reason := g.beginItem(h); reason != "" {
		g.refuse(reason, nil)
		return 0
	}
	return h.size
}

// scanBody takes bytes of the str, bin or ext body the scanner is inside:
// it counts them, or collects a map key, or compares a header value with
// the remote peer ID. It returns how many it took, or 0 when it refuses.
func (g *rpcGuard) scanBody(b []byte) int {
	n := min(uint64(len(b)), g.left)
	if n == g.left && n > 1 && g.lastItem() {
		// This body ends the request, so its last byte waits for the
		// checks; the bytes before it need not, and get a step of their
		// own.
		n--
	}
	chunk := b[:n]
	switch g.use {
	case bodyKey:
		for _, c := range chunk {
			if c >= 0x80 {
				g.refuse("map key is not ASCII", nil)
				return 0
			}
		}
		g.keyLen += copy(g.key[g.keyLen:], chunk)
	case bodyMatch:
		if string(chunk) != g.want[g.matched:g.matched+len(chunk)] {
			g.refuse(g.role.mismatch(), nil)
			return 0
		}
		g.matched += len(chunk)
	}
	g.left -= uint64(len(chunk))
	if g.left == 0 {
		if reason := g.bodyDone(); reason != "" {
			g.refuse(reason, nil)
			return 0
		}
	}
	return len(chunk)
}

// beginItem checks the head of an item against where it stands in the
// request value, and enters it. It returns why it refuses the item, or "".
func (g *rpcGuard) beginItem(h mpHead) string {
	if g.depth == 0 {
		return g.beginRequest(h)
	}
	top := &g.stack[g.depth-1]
	if top.isMap && top.left%2 == 0 {
		return g.beginKey(h)
	}
	if g.depth == 1 {
		switch g.role {
		case roleID, roleAddr:
			return g.beginHeaderValue(h)
		case roleSize:
			return g.takeSize(h)
		}
	}
	return g.beginOther(h)
}

// beginRequest enters the request value itself, which must be a map: the
// decoder would also take the array form of a struct, or nil, which carry
// no field names to check.
func (g *rpcGuard) beginRequest(h mpHead) string {
	if h.kind != mpMap {
		return "request is not a map"
	}
	if h.n == 0 || h.n > rpcGuardMaxFields {
		return "request map size out of range"
	}
	g.stack[0] = guardFrame{left: 2 * uint32(h.n), isMap: true}
	g.depth = 1
	return ""
}

// beginKey enters a map key. The decoder reads struct field names as str
// or bin (also from nil or an array of bytes, which are refused here).
func (g *rpcGuard) beginKey(h mpHead) string {
	if h.kind != mpBlob || h.n == 0 || h.n > rpcGuardMaxKey {
		return "map key is not a short str or bin"
	}
	g.use, g.left, g.keyLen = bodyKey, h.n, 0
	return ""
}

// beginHeaderValue enters the value of a top-level ID or Addr, which must
// be a str or bin holding exactly the remote peer ID.
func (g *rpcGuard) beginHeaderValue(h mpHead) string {
	if h.kind != mpBlob || h.n != uint64(len(g.want)) || h.n == 0 {
		return g.role.mismatch()
	}
	g.use, g.left, g.matched = bodyMatch, h.n, 0
	return ""
}

// takeSize takes InstallSnapshot's Size, the length of the snapshot data
// that follows the request. It must be an integer the decoder reads as a
// non-negative int64, given once.
func (g *rpcGuard) takeSize(h mpHead) string {
	g.role = roleOther
	if h.kind != mpInt || h.i < 0 || g.sawSize {
		return "bad InstallSnapshot Size"
	}
	g.size, g.sawSize = h.i, true
	return g.itemDone()
}

// beginOther enters any other item, within the limits.
func (g *rpcGuard) beginOther(h mpHead) string {
	switch h.kind {
	case mpScalar, mpInt:
		return g.itemDone()
	case mpBlob, mpExt:
		if h.n > rpcGuardMaxBlob {
			return "str, bin or ext over the size limit"
		}
		if h.n == 0 {
			return g.itemDone()
		}
		g.use, g.left = bodySkip, h.n
		return ""
	case mpArray, mpMap:
		if g.depth == rpcGuardMaxDepth {
			return "nesting over the depth limit"
		}
		if h.n > rpcGuardMaxItems {
			return "array or map over the size limit"
		}
		if h.n == 0 {
			return g.itemDone()
		}
		left := uint32(h.n)
		if h.kind == mpMap {
			left *= 2
		}
		g.stack[g.depth] = guardFrame{left: left, isMap: h.kind == mpMap}
		g.depth++
		return ""
	}
	return "invalid msgpack byte"
}

// bodyDone ends the body the scanner was inside.
func (g *rpcGuard) bodyDone() string {
	switch g.use {
	case bodyKey:
		if g.depth == 1 {
			g.role = g.keyRole()
		}
	case bodyMatch:
		if g.role == roleID {
			g.sawID = true
		} else {
			g.sawAddr = true
		}
		g.role = roleOther
	}
	g.use = bodySkip
	return g.itemDone()
}

// keyRole tells what the decoder does with the value of the top-level key
// just collected. Keys are ASCII, so the decoder matches field names
// exactly, as this does.
func (g *rpcGuard) keyRole() fieldRole {
	switch string(g.key[:g.keyLen]) {
	case "ID":
		return roleID
	case "Addr":
		return roleAddr
	case "Size":
		if g.rpcType == rpcTypeInstallSnapshot {
			return roleSize
		}
	}
	return roleOther
}

// lastItem reports whether the item the scanner is inside is the last of
// the request value: the last one of every open container.
func (g *rpcGuard) lastItem() bool {
	for _, f := range g.stack[:g.depth] {
		if f.left != 1 {
			return false
		}
	}
	return true
}

// itemDone counts a finished item in the containers it closes, and checks
// the request when it was the last one.
func (g *rpcGuard) itemDone() string {
	for g.depth > 0 {
		top := &g.stack[g.depth-1]
		top.left--
		if top.left > 0 {
			return ""
		}
		g.depth--
	}
	return g.requestDone()
}

// requestDone checks a complete request value. The byte that completed it
// is not handed out yet: when this refuses, the decoder never sees it.
func (g *rpcGuard) requestDone() string {
	if !g.sawID {
		return "request has no ID"
	}
	if !g.sawAddr {
		return "request has no Addr"
	}
	if g.rpcType != rpcTypeInstallSnapshot {
		g.phase = phaseType
		return ""
	}
	if !g.sawSize {
		return "InstallSnapshot has no Size"
	}
	g.left, g.use = uint64(g.size), bodySkip
	g.phase = phaseSnapshot
	if g.left == 0 {
		g.phase = phaseEnd
	}
	return ""
}

// mismatch is why a header value is refused.
func (r fieldRole) mismatch() string {
	if r == roleID {
		return "header ID is not the stream's peer"
	}
	return "header Addr is not the stream's peer"
}
