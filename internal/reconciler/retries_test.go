package reconciler

import "testing"

// A volume whose removal keeps failing (staged while the kubelet retries
// an unstage, say) is tried again at most MaxRetryDelay apart, however
// often it failed: client-go's default would wait 1000 s.
func TestRetriesAreAtMostMaxRetryDelayApart(t *testing.T) {
	q := retries[string]()
	for i := range 40 {
		if d := q.When("v"); d > MaxRetryDelay {
			t.Fatalf("failure %d: next try in %v, above %v", i+1, d, MaxRetryDelay)
		}
	}
	if d := q.When("v"); d != MaxRetryDelay {
		t.Errorf("after 41 failures the next try is in %v, want %v", d, MaxRetryDelay)
	}
	q.Forget("v")
	if d := q.When("v"); d > MaxRetryDelay/100 {
		t.Errorf("after a success the next failure waits %v", d)
	}
}
