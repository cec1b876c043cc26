package raft

// The msgpack heads the rpcGuard scanner reads (the msgpack spec, as
// hashicorp's go-msgpack encodes Raft requests): what kind of item a head
// starts, how long the head is, and how much follows it.

import "encoding/binary"

// mpKind is the shape of a msgpack item, as far as the scanner cares.
type mpKind uint8

const (
	mpScalar  mpKind = iota // nil, bool, float: complete in its head
	mpInt                   // an integer: complete in its head
	mpBlob                  // str or bin: n bytes follow the head
	mpExt                   // ext, fixext: n bytes follow the head (which holds the ext type)
	mpArray                 // n items follow
	mpMap                   // n key/value pairs follow
	mpInvalid               // 0xc1, which msgpack never uses
)

// mpHead is the head of a msgpack item.
type mpHead struct {
	kind mpKind
	size int    // bytes in the head
	n    uint64 // body length (mpBlob, mpExt) or item count (mpArray, mpMap)
	i    int64  // mpInt: the value, as the decoder's DecodeInt64 reads it
}

// mpHeadSize is the length of the head of the items whose first byte is
// 0xc0+i, payload of numbers included.
var mpHeadSize = [32]int{
	1, 1, 1, 1, // nil, (unused), false, true
	2, 3, 5, // bin8, bin16, bin32
	3, 4, 6, // ext8, ext16, ext32: length, then the ext type
	5, 9, // float32, float64
	2, 3, 5, 9, // uint8..uint64
	2, 3, 5, 9, // int8..int64
	2, 2, 2, 2, 2, // fixext1..fixext16: the ext type
	2, 3, 5, // str8, str16, str32
	3, 5, // array16, array32
	3, 5, // map16, map32
}

// parseHead reads the head of the msgpack item that b starts with; ok is
// false when b is too short to hold all of it.
func parseHead(b []byte) (h mpHead, ok bool) {
	t := b[0]
	switch {
	case t <= 0x7f: // positive fixint
		return mpHead{kind: mpInt, size: 1, i: int64(t)}, true
	case t <= 0x8f: // fixmap
		return mpHead{kind: mpMap, size: 1, n: uint64(t & 0x0f)}, true
	case t <= 0x9f: // fixarray
		return mpHead{kind: mpArray, size: 1, n: uint64(t & 0x0f)}, true
	case t <= 0xbf: // fixstr
		return mpHead{kind: mpBlob, size: 1, n: uint64(t & 0x1f)}, true
	case t >= 0xe0: // negative fixint
		return mpHead{kind: mpInt, size: 1, i: int64(int8(t))}, true
	}
	h.size = mpHeadSize[t-0xc0]
	if len(b) < h.size {
		return h, false
	}
	switch t {
	case 0xc0, 0xc2, 0xc3, 0xca, 0xcb:
		h.kind = mpScalar
	case 0xc1:
		h.kind = mpInvalid
	case 0xc4, 0xd9:
		h.kind, h.n = mpBlob, uint64(b[1])
	case 0xc5, 0xda:
		h.kind, h.n = mpBlob, uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xc6, 0xdb:
		h.kind, h.n = mpBlob, uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xc7:
		h.kind, h.n = mpExt, uint64(b[1])
	case 0xc8:
		h.kind, h.n = mpExt, uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xc9:
		h.kind, h.n = mpExt, uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xcc:
		h.kind, h.i = mpInt, int64(b[1])
	case 0xcd:
		h.kind, h.i = mpInt, int64(binary.BigEndian.Uint16(b[1:]))
	case 0xce:
		h.kind, h.i = mpInt, int64(binary.BigEndian.Uint32(b[1:]))
	case 0xcf: // a uint64 over MaxInt64 reads as negative, as in the decoder
		h.kind, h.i = mpInt, int64(binary.BigEndian.Uint64(b[1:]))
	case 0xd0:
		h.kind, h.i = mpInt, int64(int8(b[1]))
	case 0xd1:
		h.kind, h.i = mpInt, int64(int16(binary.BigEndian.Uint16(b[1:])))
	case 0xd2:
		h.kind, h.i = mpInt, int64(int32(binary.BigEndian.Uint32(b[1:])))
	case 0xd3:
		h.kind, h.i = mpInt, int64(binary.BigEndian.Uint64(b[1:]))
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
		h.kind, h.n = mpExt, 1<<(t-0xd4)
	case 0xdc:
		h.kind, h.n = mpArray, uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xdd:
		h.kind, h.n = mpArray, uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xde:
		h.kind, h.n = mpMap, uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xdf:
		h.kind, h.n = mpMap, uint64(binary.BigEndian.Uint32(b[1:]))
	}
	return h, true
}
