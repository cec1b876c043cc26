package raft

import (
	"reflect"
	"testing"
)

// Requests and responses given back come out of the pools zero, whatever
// they held.
func TestWirePoolsGiveZero(t *testing.T) {
	for range 100 {
		req := getRequest()
		if !reflect.DeepEqual(*req, request{}) {
			t.Fatalf("request from the pool: %+v", *req)
		}
		req.Cmd, req.Key, req.Value, req.Client, req.Seq = cmdSet, "k", []byte("v"), []byte("c"), 7
		putRequest(req)
		resp := getResponse()
		if !reflect.DeepEqual(*resp, response{}) {
			t.Fatalf("response from the pool: %+v", *resp)
		}
		resp.Code, resp.Message, resp.Value, resp.OK, resp.Index = 3, "m", []byte("v"), true, 9
		putResponse(resp)
	}
	putResponse(nil) // ignored
}
