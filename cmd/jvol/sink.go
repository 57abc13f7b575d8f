package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/metrics"
	"github.com/jvol-io/jvol/internal/sink"
)

func sinkCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to listen on, such as :7070 (required)")
	dir := fs.String("dir", "", "directory to keep the volumes' streams in (required)")
	certFile := fs.String("tls-cert", "", "serve TLS with this certificate (PEM)")
	keyFile := fs.String("tls-key", "", "and this key")
	clientCA := fs.String("client-ca", "", "require client certificates signed by this CA (PEM)")
	tokenFile := fs.String("token-file", "", "require senders to present the token in this file")
	retain := fs.Duration("retain", 0, "keep the stream this long for restore; older segments are folded into the base image (default: keep all)")
	metricsAddr := fs.String("metrics-address", "", "serve the receiver's metrics at /metrics here (host:port; port 0 picks one, printed as metrics=HOST:PORT after listen=)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listen == "" || *dir == "" {
		return fmt.Errorf("sink needs --listen and --dir: %w", errUsage)
	}
	if (*certFile == "") != (*keyFile == "") || *clientCA != "" && *certFile == "" {
		return fmt.Errorf("sink: --tls-cert and --tls-key go together, and --client-ca needs them: %w", errUsage)
	}
	cfg := sink.ReceiverConfig{Dir: *dir, Retain: *retain, ClientCertificates: *clientCA != ""}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return err
		}
		if cfg.Token = []byte(strings.TrimSpace(string(b))); len(cfg.Token) == 0 {
			return fmt.Errorf("sink: token file %s is empty", *tokenFile)
		}
	}
	rc, err := sink.NewReceiver(cfg)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		rc.Close()
		return err
	}
	if *certFile != "" {
		tc, err := serverTLS(*certFile, *keyFile, *clientCA)
		if err != nil {
			l.Close()
			rc.Close()
			return err
		}
		l = tls.NewListener(l, tc)
	}
	if *tokenFile == "" && *clientCA == "" {
		klog.InfoS("Warning: senders are not authenticated (no --token-file or --client-ca)")
	}
	klog.InfoS("Receiving journal streams", "listen", l.Addr().String(), "dir", *dir, "tls", *certFile != "", "retain", *retain)
	fmt.Printf("listen=%s\n", l.Addr())
	if *metricsAddr != "" {
		if err := serveMetrics(ctx, *metricsAddr, metrics.NewReceiver(rc.Stats)); err != nil {
			l.Close()
			rc.Close()
			return err
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- rc.Serve(l) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	l.Close()
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return err
}

func serverTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("sink certificate: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs = x509.NewCertPool()
		if !tc.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s: no PEM certificate", clientCA)
		}
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

func restoreCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	dir := fs.String("sink-dir", "", "the receiver's directory, on this machine")
	var so attach.SinkOptions
	fs.StringVar(&so.URL, "sink", "", "or the receiver itself, over the network: tcp://host:port or tls://host:port")
	fs.StringVar(&so.TokenFile, "sink-token-file", "", "token to present to the receiver")
	fs.StringVar(&so.CAFile, "sink-ca", "", "CA to check a tls:// receiver with (default: the system's)")
	fs.StringVar(&so.CertFile, "sink-cert", "", "client certificate for a tls:// receiver")
	fs.StringVar(&so.KeyFile, "sink-key", "", "its key")
	vol := fs.String("volume", "", "volume id (required)")
	until := fs.String("until", "", "a transaction id, or an RFC 3339 time: the image after every write before it")
	latest := fs.Bool("latest", false, "the newest consistent image")
	out := fs.String("out", "", "file to write the image to (required): sparse, only the blocks that hold data are written")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*dir == "") == (so.URL == "") || *vol == "" || *out == "" || (*until == "") == !*latest {
		return fmt.Errorf("restore needs one of --sink-dir or --sink, --volume, --out and one of --until or --latest: %w", errUsage)
	}
	p := sink.Point{Latest: *latest}
	if *until != "" {
		if id, err := strconv.ParseUint(*until, 10, 64); err == nil {
			p.Transid = id
		} else if t, terr := time.Parse(time.RFC3339Nano, *until); terr == nil {
			p = sink.AtTime(t)
		} else {
			return fmt.Errorf("--until %q: neither a transaction id nor an RFC 3339 time", *until)
		}
	}
	var r sink.Restored
	var err error
	if so.URL != "" {
		var c *sink.Client
		if c, err = so.Client(); err != nil {
			return err
		}
		r, err = c.RestoreFrom(ctx, *vol, p, *out)
	} else {
		r, err = sink.Restore(*dir, *vol, p, *out)
	}
	switch {
	case errors.Is(err, sink.ErrNotKept), errors.Is(err, sink.ErrNoVolume), errors.Is(err, sink.ErrAuthentication):
		return err
	case err != nil:
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Printf("transid=%d time=%s size=%d out=%s\n", r.Transid, sink.TransidTime(r.Transid).Format(time.RFC3339Nano), r.Size, *out)
	return nil
}
