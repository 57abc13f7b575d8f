package driver

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestInflight(t *testing.T) {
	var k inflight
	done, err := k.try("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.try("a"); status.Code(err) != codes.Aborted {
		t.Fatalf("a second call on a volume in flight: %v, want Aborted", err)
	}
	other, err := k.try("b")
	if err != nil {
		t.Fatalf("a call on another volume: %v", err)
	}
	other()
	done()
	again, err := k.try("a")
	if err != nil {
		t.Fatalf("a call after the first ended: %v", err)
	}
	again()
	if len(k.busy) != 0 {
		t.Errorf("volumes still in flight: %v", k.busy)
	}
}
