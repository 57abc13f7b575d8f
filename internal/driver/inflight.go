package driver

import (
	"sync"

	"google.golang.org/grpc/codes"
)

// inflight serialises calls on one volume: a second call while one is in
// flight gets Aborted, as the CSI spec asks ("the Plugin SHOULD return
// ABORTED"), and the CO retries it. The zero value is ready to use.
type inflight struct {
	mu   sync.Mutex
	busy map[string]bool
}

// try marks a call on volume id in flight and returns its end, or Aborted
// if one is in flight already.
func (k *inflight) try(id string) (func(), error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.busy[id] {
		return nil, errorf(codes.Aborted, "an operation on volume %s is in progress", id)
	}
	if k.busy == nil {
		k.busy = map[string]bool{}
	}
	k.busy[id] = true
	return func() {
		k.mu.Lock()
		delete(k.busy, id)
		k.mu.Unlock()
	}, nil
}
