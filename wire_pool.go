package raft

// Reused requests and responses on the hot paths of sessions: a member
// decodes every request of a session into one taken here and answers writes
// with one, and a Client decodes every answer into one; each goes back once
// its user is done with it. A write through a Client otherwise allocates
// about 1 KB of these per call, and at tens of thousands of writes a second
// the garbage collector, which traces the members' stores at every cycle,
// is the larger part of the process's CPU.

import "sync"

var (
	requestPool  = sync.Pool{New: func() any { return new(request) }}
	responsePool = sync.Pool{New: func() any { return new(response) }}
)

// getRequest takes a zero request.
func getRequest() *request { return requestPool.Get().(*request) }

// putRequest gives back a request nothing refers to any more (its fields
// may still be referred to: they are dropped, not cleared).
func putRequest(req *request) {
	*req = request{}
	requestPool.Put(req)
}

// getResponse takes a zero response.
func getResponse() *response { return responsePool.Get().(*response) }

// putResponse gives back a response nothing refers to any more; nil is
// ignored.
func putResponse(resp *response) {
	if resp == nil {
		return
	}
	*resp = response{}
	responsePool.Put(resp)
}
