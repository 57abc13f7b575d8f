package sink

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/volume"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB, name string) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t testing.TB, name string, server bool) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestTLSRefusesAWrongCertificate(t *testing.T) {
	ca, other := newCA(t, "jvol test CA"), newCA(t, "someone else")
	rdir := t.TempDir()
	rc := startReceiver(t, ReceiverConfig{Dir: rdir}, &tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, "receiver", true)},
		ClientCAs:    ca.pool, ClientAuth: tls.RequireAndVerifyClientCert})

	v, err := volume.OpenDir(filepath.Join(t.TempDir(), "vol"), volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize, Hold: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	url := "tls://" + rc.addr()
	start := func(cert tls.Certificate) *Sender {
		s, err := StartSender(v.Volume, SenderConfig{URL: url, Volume: testVolume, Duplex: journal.Full, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
			TLS: &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{cert}}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	r := &rig{t: t, v: v, rdir: rdir, size: 8 << 20, rng: newRand(t), timeout: 30 * time.Second}
	r.s = start(other.issue(t, "intruder", false))
	r.eventually("a refused handshake", func() bool { return r.s.Stats().LastError != "" })
	if st := r.s.Stats(); st.State != Disconnected || !strings.Contains(st.LastError, "certificate") {
		t.Fatalf("a client with a certificate of another CA: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(rdir, testVolume)); !os.IsNotExist(err) {
		t.Fatalf("the receiver made the volume's directory for a refused client: %v", err)
	}
	r.s.Close()

	r.s = start(ca.issue(t, "node", false))
	defer r.s.Close()
	id := r.write(4)
	r.waitAcked(id)
	sameImage(t, "mirror over TLS", r.mirror(), r.image())
}

// rawPeer is a hand-made sender, for sending what a real one never would.
type rawPeer struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawPeer {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawPeer{t: t, c: c, br: bufio.NewReader(c)}
}

func (p *rawPeer) send(b []byte) { p.c.Write(b) }

func (p *rawPeer) record(stream uint16, id uint64, payload []byte) {
	p.send(appendRecord(nil, stream, id, payload))
}

func (p *rawPeer) hello(vol string, token string) Welcome {
	p.t.Helper()
	h := Hello{Full: true, Size: 1 << 20, Epoch: [16]byte{9}, Oldest: 1, Newest: 1 << 40, Volume: vol, Token: []byte(token)}
	p.record(StreamHello, 0, h.Encode())
	var buf []byte
	r, _, err := readRecord(p.br, &buf, 1<<20)
	if err != nil || r.ID() != StreamWelcome {
		p.t.Fatalf("no welcome: %v %+v %s", err, r.Header, r.Payload)
	}
	w, err := DecodeWelcome(r.Payload)
	if err != nil {
		p.t.Fatal(err)
	}
	return w
}

// refusal reads until the receiver cuts the link, and returns its reason.
func (p *rawPeer) refusal() string {
	p.t.Helper()
	p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var buf []byte
	for {
		r, _, err := readRecord(p.br, &buf, 1<<20)
		if err != nil {
			p.t.Fatalf("the receiver closed the link without a reason: %v", err)
		}
		if r.ID() == StreamRefuse {
			return string(r.Payload)
		}
	}
}

func writeRecord(off uint64, data []byte) []byte {
	p := make([]byte, blockrec.WriteSize(len(data)))
	blockrec.PutWrite(p, off, data)
	return p
}

// baseline sends a one-chunk baseline of a 1 MiB volume, consistent at id.
func (p *rawPeer) baseline(id uint64) {
	bb := BaselineBegin{Epoch: [16]byte{9}, Size: 1 << 20}
	p.record(StreamBaselineBegin, id, bb.Encode())
	p.record(StreamBaselineData, id, writeRecord(0, make([]byte, 4096)))
	p.record(StreamBaselineEnd, id, nil)
}

func dirDigest(t *testing.T, dir string) map[string]string {
	m := map[string]string{}
	filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && path != (volDir{path: filepath.Dir(path)}).lock() {
			b, _ := os.ReadFile(path)
			m[path] = string(b)
		}
		return nil
	})
	return m
}

func TestBadPeersAreCutOff(t *testing.T) {
	r := newRig(t, 8<<20, true)
	r.rc.cfg.HandshakeTimeout = 2 * time.Second
	addr := r.rc.addr()
	r.waitAcked(r.write(2))

	// A stored stream, then bad input on top of it.
	good := dialRaw(t, addr)
	if w := good.hello("other", ""); w.Mode != ModeBaseline {
		t.Fatalf("new volume: welcome %+v", w)
	}
	good.baseline(100)
	good.record(journal.StreamFirstTx|journal.FlagBegin|journal.FlagEnd, 102, writeRecord(4096, []byte(strings.Repeat("a", 4096))))
	good.c.Close()
	r.eventually("the other volume's connection to end", func() bool {
		r.rc.mu.Lock()
		defer r.rc.mu.Unlock()
		return r.rc.vols["other"] == nil
	})
	stored := dirDigest(t, filepath.Join(r.rdir, "other"))

	badCRC := appendRecord(nil, journal.StreamFirstTx, 200, writeRecord(0, make([]byte, 4096)))
	badCRC[40] ^= 1
	oversized := appendRecord(nil, journal.StreamFirstTx, 200, nil)
	binary.LittleEndian.PutUint32(oversized[4:], 64<<20)
	for _, tc := range []struct {
		name, want string
		hello      bool
		send       func(p *rawPeer, after uint64)
	}{
		{"garbage", "bad magic", false, func(p *rawPeer, _ uint64) { p.send([]byte(strings.Repeat("\x17garbage", 512))) }},
		{"wrong magic in the hello", "bad magic", false, func(p *rawPeer, _ uint64) {
			h := Hello{Size: 4096, Volume: "other"}
			b := h.Encode()
			copy(b, "XXXX")
			p.record(StreamHello, 0, b)
		}},
		{"unknown volume", "volume id", false, func(p *rawPeer, _ uint64) {
			h := Hello{Size: 4096, Volume: "other"}
			b := h.Encode()
			b = append(b[:helloFixed], "../x"...)
			binary.LittleEndian.PutUint16(b[48:], 4)
			p.record(StreamHello, 0, b)
		}},
		{"bad checksum", "checksum", true, func(p *rawPeer, _ uint64) { p.send(badCRC) }},
		{"oversized record", "record of 67108864 bytes", true, func(p *rawPeer, _ uint64) { p.send(oversized) }},
		{"id going backwards", "goes backwards", true, func(p *rawPeer, after uint64) {
			// The first is new (and stored); the second goes back.
			p.record(journal.StreamFirstTx, after+2, writeRecord(0, make([]byte, 4096)))
			p.record(journal.StreamFirstTx, after+1, writeRecord(0, make([]byte, 4096)))
		}},
		{"write beyond the volume", "beyond the size", true, func(p *rawPeer, after uint64) {
			p.record(journal.StreamFirstTx, after+2, writeRecord(1<<20, make([]byte, 4096)))
		}},
		{"journal record inside a baseline", "inside a baseline", true, func(p *rawPeer, after uint64) {
			bb := BaselineBegin{Epoch: [16]byte{9}, Size: 1 << 20}
			p.record(StreamBaselineBegin, after, bb.Encode())
			p.record(journal.StreamFirstTx, after+2, writeRecord(0, make([]byte, 4096)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := dialRaw(t, addr)
			p.t = t
			var after uint64
			if tc.hello {
				w := p.hello("other", "")
				if w.Mode != ModeResume || w.After < 102 {
					t.Fatalf("welcome %+v, want a resume after 102 or later", w)
				}
				after = w.After
			}
			tc.send(p, after)
			if got := p.refusal(); !strings.Contains(got, tc.want) {
				t.Fatalf("refused with %q, want %q", got, tc.want)
			}
		})
	}
	r.eventually("the bad connections to end", func() bool {
		r.rc.mu.Lock()
		defer r.rc.mu.Unlock()
		return r.rc.vols["other"] == nil
	})
	// The stored stream is still there, byte for byte; only valid records
	// sent before a bad one were added.
	after := dirDigest(t, filepath.Join(r.rdir, "other"))
	for path, b := range stored {
		if strings.HasSuffix(path, segSuffix) && !strings.HasPrefix(after[path], b) {
			t.Errorf("%s changed under bad input", path)
		}
	}
	restored := filepath.Join(t.TempDir(), "other.img")
	res, err := Restore(r.rdir, "other", Point{Latest: true}, restored)
	if err != nil || res.Transid != 104 {
		t.Fatalf("restore of the attacked volume: %+v, %v; want its last good record, 104", res, err)
	}
	// The receiver still serves the rig's volume.
	id := r.write(3)
	r.waitAcked(id)
	sameImage(t, "mirror beside bad peers", r.mirror(), r.image())
}

func TestWrongTokenIsRefused(t *testing.T) {
	rc := startReceiver(t, ReceiverConfig{Dir: t.TempDir(), Token: []byte("right")}, nil)
	p := dialRaw(t, rc.addr())
	h := Hello{Size: 4096, Volume: "v", Token: []byte("wrong")}
	p.record(StreamHello, 0, h.Encode())
	if got := p.refusal(); !strings.Contains(got, "wrong token") {
		t.Fatalf("refused with %q", got)
	}
	if w := dialRaw(t, rc.addr()).hello("v", "right"); w.Mode != ModeBaseline {
		t.Fatalf("right token: %+v", w)
	}
	// A wrong token for a volume it keeps counts as the volume's.
	p = dialRaw(t, rc.addr())
	p.record(StreamHello, 0, h.Encode())
	p.refusal()
	// Counted by its reason; the first, for a volume the receiver did not
	// keep, under "": a peer without the token adds no label.
	st := rc.Stats()
	if len(st) != 2 || st[0].Volume != "" || st[0].CutOff != [4]uint64{1, 0, 0, 0} || st[1].Volume != "v" || st[1].CutOff != [4]uint64{1, 0, 0, 0} {
		t.Errorf("receiver figures %+v, want one cut-off for authentication under \"\" and one under v", st)
	}
}
