package attach

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/sink"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// SinkOptions say where a volume's journal stream goes.
type SinkOptions struct {
	URL    string         `json:"url"`
	Duplex journal.Duplex `json:"duplex"` // Half or Full
	// Files, read at each attach: the token, and for tls:// the receiver's
	// CA and this client's certificate and key (all optional).
	TokenFile string `json:"tokenFile,omitempty"`
	CAFile    string `json:"caFile,omitempty"`
	CertFile  string `json:"certFile,omitempty"`
	KeyFile   string `json:"keyFile,omitempty"`
}

// Check validates the settings.
func (o *SinkOptions) Check() error {
	if _, _, err := sink.ParseURL(o.URL); err != nil {
		return err
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("sink: a client certificate and its key go together")
	}
	return nil
}

// sinkSettings returns the settings to attach with: o if given (nil for an
// empty URL), else what the directory holds.
func sinkSettings(dir string, o *SinkOptions) (*SinkOptions, error) {
	if o != nil {
		if o.URL == "" {
			return nil, nil
		}
		if err := o.Check(); err != nil {
			return nil, err
		}
		// Kept for later attaches, which may run elsewhere.
		for _, p := range []*string{&o.TokenFile, &o.CAFile, &o.CertFile, &o.KeyFile} {
			if *p != "" {
				abs, err := filepath.Abs(*p)
				if err != nil {
					return nil, err
				}
				*p = abs
			}
		}
		return o, nil
	}
	b, err := os.ReadFile(volume.Layout(dir).Sink())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var so SinkOptions
	if err := json.Unmarshal(b, &so); err != nil {
		return nil, fmt.Errorf("%s: %w", volume.SinkFile, err)
	}
	if err := so.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", volume.SinkFile, err)
	}
	return &so, nil
}

func saveSinkSettings(dir string, o *SinkOptions) error {
	path := volume.Layout(dir).Sink()
	if o == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	b, err := json.MarshalIndent(o, "", "  ")
	if err != nil {
		return err
	}
	return vfs.WriteFileAtomic(vfs.OS, path, append(b, '\n'))
}

// config reads the files the settings name.
func (o *SinkOptions) config(volumeID string) (sink.SenderConfig, error) {
	cfg := sink.SenderConfig{URL: o.URL, Volume: volumeID, Duplex: o.Duplex}
	if o.TokenFile != "" {
		b, err := os.ReadFile(o.TokenFile)
		if err != nil {
			return cfg, fmt.Errorf("sink token: %w", err)
		}
		cfg.Token = []byte(strings.TrimSpace(string(b)))
	}
	if strings.HasPrefix(o.URL, "tls://") {
		tc, err := ClientTLS(o.CAFile, o.CertFile, o.KeyFile)
		if err != nil {
			return cfg, err
		}
		cfg.TLS = tc
	}
	return cfg, nil
}

// Client is a client of requests (restores, pins) to the receiver o names, with
// its credentials.
func (o *SinkOptions) Client() (*sink.Client, error) {
	if _, _, err := sink.ParseURL(o.URL); err != nil {
		return nil, err
	}
	cfg, err := o.config("")
	if err != nil {
		return nil, err
	}
	return &sink.Client{URL: cfg.URL, TLS: cfg.TLS, Token: cfg.Token}, nil
}

// ClientTLS builds a client TLS configuration: the receiver is checked
// against caFile (the system's roots if empty); certFile and keyFile, if
// set, are this client's certificate.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("sink CA: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("sink CA %s: no PEM certificate", caFile)
		}
	}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("sink client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}
