package sink

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// faultProxy sits between a sender and a receiver and breaks the link on
// demand: it cuts every connection, cuts one after a number of bytes (so
// mid-record), refuses connections while down, and throttles.
type faultProxy struct {
	t *testing.T
	l net.Listener

	mu        sync.Mutex
	target    string
	down      bool
	cutAfter  int64 // cut the next connection after this many bytes sender to receiver; 0: never
	rate      int64 // bytes per second sender to receiver; 0: unlimited
	conns     map[net.Conn]struct{}
	cuts      int
	forwarded int64
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, l: l, target: target, conns: map[net.Conn]struct{}{}}
	go p.accept()
	t.Cleanup(func() { l.Close(); p.cut() })
	return p
}

func (p *faultProxy) url() string { return "tcp://" + p.l.Addr().String() }

func (p *faultProxy) set(f func(p *faultProxy)) {
	p.mu.Lock()
	f(p)
	p.mu.Unlock()
}

// cut closes every connection through the proxy.
func (p *faultProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	p.cuts++
}

func (p *faultProxy) accept() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down, target, cutAfter := p.down, p.target, p.cutAfter
		p.cutAfter = 0
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[u] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go p.pipe(c, u, cutAfter, true)
		go p.pipe(u, c, 0, false)
	}
}

// pipe copies from src to dst; the sender's direction may be cut after
// limit bytes and throttled.
func (p *faultProxy) pipe(src, dst net.Conn, limit int64, upstream bool) {
	defer func() {
		src.Close()
		dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 64<<10)
	var n int64
	for {
		m, err := src.Read(buf)
		if m > 0 {
			chunk := buf[:m]
			if limit > 0 && n+int64(m) >= limit {
				chunk = buf[:limit-n]
			}
			if upstream {
				p.mu.Lock()
				rate := p.rate
				p.forwarded += int64(len(chunk))
				p.mu.Unlock()
				if rate > 0 {
					time.Sleep(time.Duration(int64(len(chunk)) * int64(time.Second) / rate)) // the throttle itself, not synchronisation
				}
			}
			if _, werr := dst.Write(chunk); werr != nil {
				return
			}
			n += int64(len(chunk))
			if limit > 0 && n >= limit {
				return // cut mid-stream
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}
