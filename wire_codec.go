package raft

// Requests and responses written and read without reflection. Every call
// through a session encodes and decodes a request and its answer once per
// hop, and the reflective CBOR codec was a tenth of a write's CPU. The
// encoders write exactly the bytes cborEnc.Marshal writes (canonical CBOR,
// a map keyed by small integers, empty fields left out) and hand the rare
// messages with nested fields (peer exchange, status, watch) to it. The
// decoders take that canonical form only: anything else (another field
// order, a longer head than needed, a field they do not know, a type they
// do not expect) goes to wireDec, so the set of messages accepted, the
// values decoded and the errors returned are exactly wireDec's.

import (
	"fmt"
	"math"
	"sync"
)

// Request keys (see request's cbor tags).
const (
	reqKeyCmd       = 1
	reqKeyKey       = 2
	reqKeyValue     = 3
	reqKeyPrefix    = 4
	reqKeyTimeout   = 5
	reqKeyBarrier   = 6
	reqKeyPeer      = 7
	reqKeyForwarded = 9
	reqKeyClient    = 12
	reqKeySeq       = 13
	reqKeyCommand   = 14
	reqKeyAfter     = 20
	reqKeyWatchID   = 21
	reqKeyLease     = 30
)

// Response keys (see response's cbor tags).
const (
	respKeyCode        = 1
	respKeyMessage     = 2
	respKeyValue       = 3
	respKeyFound       = 4
	respKeyKeys        = 5
	respKeyIndex       = 7
	respKeyOK          = 10
	respKeyCreateIndex = 11
	respKeyModIndex    = 12
	respKeyLease       = 13
	respKeyThrough     = 21
	respKeyItem        = 30
	respKeyClaimed     = 31
)

// cborTrue and cborFalse are CBOR's simple values true and false.
const (
	cborFalse byte = 0xf4
	cborTrue  byte = 0xf5
)

// appendRequest appends req encoded as cborEnc.Marshal encodes it.
func appendRequest(b []byte, req *request) ([]byte, error) {
	if len(req.Peers) > 0 || req.Status != nil || len(req.Kinds) > 0 || req.NonVoters != nil || req.Lowest != nil ||
		req.SawCluster != nil {
		enc, err := cborEnc.Marshal(req)
		if err != nil {
			return b, err
		}
		return append(b, enc...), nil
	}
	n := 1 // Cmd has no omitempty
	for _, set := range [...]bool{req.Key != "", len(req.Value) > 0, req.Prefix != "", req.Timeout != 0,
		req.Barrier != 0, len(req.Peer) > 0, req.Forwarded, len(req.Client) > 0, req.Seq != 0,
		len(req.Command) > 0, req.After != 0, len(req.WatchID) > 0, req.Lease != 0} {
		if set {
			n++
		}
	}
	b = appendHead(b, 5, uint64(n))
	b = appendText(b, reqKeyCmd, req.Cmd)
	if req.Key != "" {
		b = appendText(b, reqKeyKey, req.Key)
	}
	b = appendBytesField(b, reqKeyValue, req.Value)
	if req.Prefix != "" {
		b = appendText(b, reqKeyPrefix, req.Prefix)
	}
	b = appendIntField(b, reqKeyTimeout, req.Timeout)
	b = appendIntField(b, reqKeyBarrier, req.Barrier)
	b = appendBytesField(b, reqKeyPeer, req.Peer)
	b = appendBoolField(b, reqKeyForwarded, req.Forwarded)
	b = appendBytesField(b, reqKeyClient, req.Client)
	b = appendUintField(b, reqKeySeq, req.Seq)
	b = appendBytesField(b, reqKeyCommand, req.Command)
	b = appendUintField(b, reqKeyAfter, req.After)
	b = appendBytesField(b, reqKeyWatchID, req.WatchID)
	b = appendUintField(b, reqKeyLease, req.Lease)
	return b, nil
}

// appendResponse appends resp encoded as cborEnc.Marshal encodes it.
func appendResponse(b []byte, resp *response) ([]byte, error) {
	if len(resp.Peers) > 0 || resp.Status != nil || len(resp.Kinds) > 0 || resp.NonVoters != nil ||
		resp.Lowest != nil || resp.SawCluster != nil || len(resp.Events) > 0 || resp.Stats != nil {
		enc, err := cborEnc.Marshal(resp)
		if err != nil {
			return b, err
		}
		return append(b, enc...), nil
	}
	n := 0
	for _, set := range [...]bool{resp.Code != 0, resp.Message != "", len(resp.Value) > 0, resp.Found,
		len(resp.Keys) > 0, resp.Index != 0, resp.OK, resp.CreateIndex != 0, resp.ModIndex != 0,
		resp.Lease != 0, resp.Through != 0, resp.Item != 0, resp.Claimed} {
		if set {
			n++
		}
	}
	b = appendHead(b, 5, uint64(n))
	b = appendUintField(b, respKeyCode, uint64(resp.Code))
	if resp.Message != "" {
		b = appendText(b, respKeyMessage, resp.Message)
	}
	b = appendBytesField(b, respKeyValue, resp.Value)
	b = appendBoolField(b, respKeyFound, resp.Found)
	if len(resp.Keys) > 0 {
		b = appendHead(b, 0, respKeyKeys)
		b = appendHead(b, 4, uint64(len(resp.Keys)))
		for _, k := range resp.Keys {
			b = appendHead(b, 3, uint64(len(k)))
			b = append(b, k...)
		}
	}
	b = appendUintField(b, respKeyIndex, resp.Index)
	b = appendBoolField(b, respKeyOK, resp.OK)
	b = appendUintField(b, respKeyCreateIndex, resp.CreateIndex)
	b = appendUintField(b, respKeyModIndex, resp.ModIndex)
	b = appendUintField(b, respKeyLease, resp.Lease)
	b = appendUintField(b, respKeyThrough, resp.Through)
	b = appendUintField(b, respKeyItem, resp.Item)
	b = appendBoolField(b, respKeyClaimed, resp.Claimed)
	return b, nil
}

// appendText appends a text string field (the caller leaves out empty
// ones where the field has omitempty).
func appendText(b []byte, key uint64, s string) []byte {
	b = appendHead(b, 0, key)
	b = appendHead(b, 3, uint64(len(s)))
	return append(b, s...)
}

// appendBytesField appends a byte string field unless it is empty.
func appendBytesField(b []byte, key uint64, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = appendHead(b, 0, key)
	b = appendHead(b, 2, uint64(len(v)))
	return append(b, v...)
}

// appendIntField appends a signed integer field unless it is 0.
func appendIntField(b []byte, key uint64, v int64) []byte {
	if v == 0 {
		return b
	}
	b = appendHead(b, 0, key)
	if v > 0 {
		return appendHead(b, 0, uint64(v))
	}
	return appendHead(b, 1, uint64(-1-v))
}

// appendUintField appends an unsigned integer field unless it is 0.
func appendUintField(b []byte, key uint64, v uint64) []byte {
	if v == 0 {
		return b
	}
	return appendHead(appendHead(b, 0, key), 0, v)
}

// appendBoolField appends a boolean field unless it is false.
func appendBoolField(b []byte, key uint64, v bool) []byte {
	if !v {
		return b
	}
	return append(appendHead(b, 0, key), cborTrue)
}

// decodeRequest decodes a plaintext request body. Byte fields of the
// request may alias b, which the caller no longer changes.
func decodeRequest(b []byte) (*request, error) {
	req := new(request)
	if err := decodeRequestInto(b, req); err != nil {
		return nil, err
	}
	return req, nil
}

// decodeRequestInto is decodeRequest into req, which must be zero.
func decodeRequestInto(b []byte, req *request) error {
	if parseRequest(b, req) {
		return nil
	}
	*req = request{}
	if err := wireDec.Unmarshal(b, req); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidCommand, err)
	}
	return nil
}

// decodeResponse decodes a plaintext response body into resp, which must
// be zero; byte fields may alias b. Its errors are wireDec's.
func decodeResponse(b []byte, resp *response) error {
	if parseResponse(b, resp) {
		return nil
	}
	*resp = response{}
	return wireDec.Unmarshal(b, resp)
}

// wireReader reads the canonical fields of a message (cmdReader's heads:
// shortest form only).
type wireReader struct{ cmdReader }

// fields reads a map head and calls field for each key in strictly
// increasing order; false when the message is not in the canonical form
// the fast path reads (field said so, or bytes are left over).
func (r *wireReader) fields(field func(key uint64) bool) bool {
	m, n, ok := r.head()
	if !ok || m != 5 || n > 64 {
		return false
	}
	var last uint64
	for i := uint64(0); i < n; i++ {
		m, key, ok := r.head()
		if !ok || m != 0 || (i > 0 && key <= last) || !field(key) {
			return false
		}
		last = key
	}
	return r.off == len(r.b)
}

// text reads a text string.
func (r *wireReader) text() (string, bool) {
	s, ok := r.str(3)
	return string(s), ok
}

// command reads a request's command: the known ones without a copy.
func (r *wireReader) command() (string, bool) {
	s, ok := r.str(3)
	if !ok {
		return "", false
	}
	switch string(s) {
	case cmdSet:
		return cmdSet, true
	case cmdGet:
		return cmdGet, true
	case cmdDelete:
		return cmdDelete, true
	case cmdTxn:
		return cmdTxn, true
	case cmdGetEntry:
		return cmdGetEntry, true
	case cmdReadIndex:
		return cmdReadIndex, true
	case cmdKeys:
		return cmdKeys, true
	case cmdClaimOf:
		return cmdClaimOf, true
	}
	return string(s), true
}

// bytes reads a non-empty byte string, aliasing the message (an empty one
// is left to wireDec, which decides between nil and empty).
func (r *wireReader) bytes() ([]byte, bool) {
	s, ok := r.str(2)
	return s, ok && len(s) > 0
}

// uint reads an unsigned integer up to max.
func (r *wireReader) uint(max uint64) (uint64, bool) {
	m, n, ok := r.head()
	return n, ok && m == 0 && n <= max
}

// int reads a signed 64-bit integer.
func (r *wireReader) int() (int64, bool) {
	m, n, ok := r.head()
	if !ok || n > math.MaxInt64 {
		return 0, false
	}
	switch m {
	case 0:
		return int64(n), true
	case 1:
		return -1 - int64(n), true
	}
	return 0, false
}

// bool reads a boolean.
func (r *wireReader) bool() (bool, bool) {
	if r.off >= len(r.b) {
		return false, false
	}
	c := r.b[r.off]
	r.off++
	switch c {
	case cborTrue:
		return true, true
	case cborFalse:
		return false, true
	}
	return false, false
}

// parseRequest decodes the canonical form of the requests sessions carry;
// false (req partly filled) leaves b to wireDec.
func parseRequest(b []byte, req *request) bool {
	r := wireReader{cmdReader{b: b}}
	return r.fields(func(key uint64) (ok bool) {
		switch key {
		case reqKeyCmd:
			req.Cmd, ok = r.command()
		case reqKeyKey:
			req.Key, ok = r.text()
		case reqKeyValue:
			req.Value, ok = r.bytes()
		case reqKeyPrefix:
			req.Prefix, ok = r.text()
		case reqKeyTimeout:
			req.Timeout, ok = r.int()
		case reqKeyBarrier:
			req.Barrier, ok = r.int()
		case reqKeyPeer:
			req.Peer, ok = r.bytes()
		case reqKeyForwarded:
			req.Forwarded, ok = r.bool()
		case reqKeyClient:
			req.Client, ok = r.bytes()
		case reqKeySeq:
			req.Seq, ok = r.uint(math.MaxUint64)
		case reqKeyCommand:
			req.Command, ok = r.bytes()
		case reqKeyAfter:
			req.After, ok = r.uint(math.MaxUint64)
		case reqKeyWatchID:
			req.WatchID, ok = r.bytes()
		case reqKeyLease:
			req.Lease, ok = r.uint(math.MaxUint64)
		}
		return ok
	})
}

// parseResponse decodes the canonical form of the common responses; false
// (resp partly filled) leaves b to wireDec.
func parseResponse(b []byte, resp *response) bool {
	r := wireReader{cmdReader{b: b}}
	return r.fields(func(key uint64) (ok bool) {
		switch key {
		case respKeyCode:
			var c uint64
			c, ok = r.uint(math.MaxUint16)
			resp.Code = uint16(c)
		case respKeyMessage:
			resp.Message, ok = r.text()
		case respKeyValue:
			resp.Value, ok = r.bytes()
		case respKeyFound:
			resp.Found, ok = r.bool()
		case respKeyKeys:
			resp.Keys, ok = r.texts()
		case respKeyIndex:
			resp.Index, ok = r.uint(math.MaxUint64)
		case respKeyOK:
			resp.OK, ok = r.bool()
		case respKeyCreateIndex:
			resp.CreateIndex, ok = r.uint(math.MaxUint64)
		case respKeyModIndex:
			resp.ModIndex, ok = r.uint(math.MaxUint64)
		case respKeyLease:
			resp.Lease, ok = r.uint(math.MaxUint64)
		case respKeyThrough:
			resp.Through, ok = r.uint(math.MaxUint64)
		case respKeyItem:
			resp.Item, ok = r.uint(math.MaxUint64)
		case respKeyClaimed:
			resp.Claimed, ok = r.bool()
		}
		return ok
	})
}

// texts reads a non-empty array of text strings, within wireDec's limit on
// array elements.
func (r *wireReader) texts() ([]string, bool) {
	m, n, ok := r.head()
	// Each element takes at least a byte: a count past what is left cannot
	// be right, and is not allocated for.
	if !ok || m != 4 || n == 0 || n > 1<<16 || n > uint64(len(r.b)-r.off) {
		return nil, false
	}
	out := make([]string, 0, n)
	for range n {
		s, ok := r.text()
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// wireBuf is a reusable buffer for encoding one message: a session copies
// a frame into its write queue before send returns, so the buffer the
// message was encoded in serves the next one.
type wireBuf struct{ b []byte }

var wireBufs = sync.Pool{New: func() any { return &wireBuf{b: make([]byte, 0, 256)} }}

func getWireBuf() *wireBuf { return wireBufs.Get().(*wireBuf) }

// putWireBuf gives a buffer back; a large one is left to the collector.
func putWireBuf(w *wireBuf) {
	if cap(w.b) > 64<<10 {
		return
	}
	w.b = w.b[:0]
	wireBufs.Put(w)
}
