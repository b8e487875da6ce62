package main

import (
	"crypto/tls"
	"fmt"
	stdlog "log"
	"net/http"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/api"
	"github.com/libvirt-volume-provisioner/provisioner/config"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// httpSettings are the REST listener's guard and timeout settings.
type httpSettings struct {
	allowedHosts, corsOrigins        *string
	readTimeout, writeTimeout, keepA *time.Duration
	contentMax                       *int64
	contentRead, contentTTL          *time.Duration
}

func httpFlags(c *config.Set) *httpSettings {
	return &httpSettings{
		allowedHosts: c.String("PROVISIONER_ALLOWED_HOSTS", "", "further names (comma-separated) requests may carry in Host, e.g. a load balancer's; the listen address is always allowed, and localhost and loopback addresses on a loopback listener"),
		corsOrigins:  c.String("PROVISIONER_CORS_ORIGINS", "", "browser origins (scheme://host[:port], comma-separated) allowed to call the API cross-origin; empty refuses every cross-origin request"),
		readTimeout:  c.Duration("PROVISIONER_HTTP_READ_TIMEOUT", 30*time.Second, "longest time to read a request (event streams are exempt)"),
		writeTimeout: c.Duration("PROVISIONER_HTTP_WRITE_TIMEOUT", 60*time.Second, "longest time to write a response (event streams are exempt)"),
		keepA:        c.Duration("PROVISIONER_SSE_KEEPALIVE", 15*time.Second, "interval of the keep-alive comments on an idle event stream"),
		contentMax:   c.Int64("PROVISIONER_CONTENT_MAX_BYTES", messaging.DefaultMaxContentBytes, "cap of an upload (PUT /api/v1/volumes/{hypervisor}/{volume_name}/content), bytes"),
		contentRead:  c.Duration("PROVISIONER_CONTENT_READ_TIMEOUT", 30*time.Minute, "longest time to read an upload's body (instead of PROVISIONER_HTTP_READ_TIMEOUT)"),
		contentTTL:   c.Duration("PROVISIONER_CONTENT_TTL", 24*time.Hour, "maximum age of an upload in its host's content bucket (a backstop: an upload is removed when its job ends)"),
	}
}

// check refuses timeouts that are not positive.
func (h *httpSettings) check() error {
	for name, d := range map[string]time.Duration{"PROVISIONER_HTTP_READ_TIMEOUT": *h.readTimeout,
		"PROVISIONER_HTTP_WRITE_TIMEOUT": *h.writeTimeout, "PROVISIONER_SSE_KEEPALIVE": *h.keepA,
		"PROVISIONER_CONTENT_READ_TIMEOUT": *h.contentRead, "PROVISIONER_CONTENT_TTL": *h.contentTTL} {
		if d <= 0 {
			return fmt.Errorf("%s must be positive, not %s", name, d)
		}
	}
	if *h.contentMax < 0 {
		return fmt.Errorf("PROVISIONER_CONTENT_MAX_BYTES must not be negative, not %d", *h.contentMax)
	}
	return nil
}

// apply fills the API configuration's guard and stream settings; the names
// of the TLS certificate are allowed Host names too.
func (h *httpSettings) apply(cfg *api.Config, listen string, tc *tls.Config) {
	cfg.ListenAddr = listen
	cfg.AllowedHosts = append(splitList(*h.allowedHosts), certNames(tc)...)
	cfg.CORSOrigins = splitList(*h.corsOrigins)
	cfg.SSEKeepAlive = *h.keepA
	cfg.MaxContentBytes, cfg.ContentReadTimeout, cfg.ContentTTL = *h.contentMax, *h.contentRead, *h.contentTTL
}

// server is the REST listener's HTTP server.
func (h *httpSettings) server(handler http.Handler, tc *tls.Config, log *logrus.Logger) *http.Server {
	return &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: *h.readTimeout, WriteTimeout: *h.writeTimeout,
		TLSConfig: tc, ErrorLog: stdlog.New(log.WriterLevel(logrus.WarnLevel), "", 0)}
}

// certNames are the DNS names and addresses of the listener's certificate.
func certNames(tc *tls.Config) []string {
	var names []string
	if tc == nil {
		return nil
	}
	for _, c := range tc.Certificates {
		if c.Leaf == nil {
			continue
		}
		names = append(names, c.Leaf.DNSNames...)
		for _, ip := range c.Leaf.IPAddresses {
			names = append(names, ip.String())
		}
	}
	return names
}

// splitList splits a comma-separated setting, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
