package client

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/auth"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// DefaultBaseURL is the API of make run and make demo.
const DefaultBaseURL = "http://127.0.0.1:8080"

// mintedTokenTTL is how long a token the client mints for one request is
// valid: long enough for clock skew, short enough to be worthless later.
const mintedTokenTTL = 5 * time.Minute

// RetryPolicy says how a request that got 503 or no answer is retried.
type RetryPolicy struct {
	// Attempts is how many times a request is sent at most (1: never
	// retried).
	Attempts int
	// MinBackoff is the wait before the first retry; it doubles on each
	// retry up to MaxBackoff, with jitter. A Retry-After header on a 503
	// is honoured up to MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
}

// DefaultRetryPolicy tries 5 times over about 7 seconds.
var DefaultRetryPolicy = RetryPolicy{Attempts: 5, MinBackoff: 250 * time.Millisecond, MaxBackoff: 4 * time.Second}

// backoff is the wait before retry n (1 for the first retry).
func (p RetryPolicy) backoff(n int) time.Duration {
	d := p.MinBackoff << min(n-1, 20)
	if d <= 0 || d > p.MaxBackoff {
		d = p.MaxBackoff
	}
	// Full jitter over the upper half keeps clients that failed together apart.
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// Client calls the API. It is safe for concurrent use.
type Client struct {
	base      *url.URL
	hc        *http.Client
	token     func() (string, error)
	retry     RetryPolicy
	timeout   time.Duration
	poll      time.Duration
	userAgent string
}

type settings struct {
	base      string
	hc        *http.Client
	tls       *tls.Config
	token     func() (string, error)
	retry     RetryPolicy
	timeout   time.Duration
	poll      time.Duration
	userAgent string
}

// Option configures a Client.
type Option func(*settings) error

// WithBaseURL is the API's address, e.g. https://provisioner.example.com:8443
// (default DefaultBaseURL).
func WithBaseURL(u string) Option {
	return func(s *settings) error { s.base = u; return nil }
}

// WithToken sends an API token (X-API-Token) with every request.
func WithToken(token string) Option {
	return func(s *settings) error {
		if token == "" {
			return errors.New("empty API token")
		}
		s.token = func() (string, error) { return token, nil }
		return nil
	}
}

// WithTokenSecret mints a short-lived token for each request from a token
// secret (the base64 secret of a PROVISIONER_TOKEN_SECRETS entry) and its key
// id; the token names subject as the caller (the key id when empty) and has
// no scope beyond the secret's.
func WithTokenSecret(keyID, secret, subject string) Option {
	return func(s *settings) error {
		keys, err := auth.ParseKeys(keyID + ":" + secret)
		if err != nil {
			return err
		}
		if len(keys) != 1 {
			return errors.New("token secret: want one key id and its secret")
		}
		if subject == "" {
			subject = keyID
		}
		s.token = func() (string, error) {
			return keys.Mint(auth.Claims{KeyID: keyID, Subject: subject, Expires: time.Now().Add(mintedTokenTTL).Unix()})
		}
		return nil
	}
}

// WithTLSConfig is the TLS configuration of an https API: its CA and, for
// mutual TLS, the client certificate. Not with WithHTTPClient.
func WithTLSConfig(c *tls.Config) Option {
	return func(s *settings) error { s.tls = c; return nil }
}

// WithHTTPClient sends requests through hc. Its Timeout must be zero or
// event streams (Watch) end early; the client bounds other requests itself
// (WithRequestTimeout).
func WithHTTPClient(hc *http.Client) Option {
	return func(s *settings) error { s.hc = hc; return nil }
}

// WithRetryPolicy replaces DefaultRetryPolicy.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(s *settings) error {
		if p.Attempts < 1 {
			return fmt.Errorf("retry policy: attempts must be at least 1, not %d", p.Attempts)
		}
		s.retry = p
		return nil
	}
}

// WithRequestTimeout bounds each attempt of a request other than an event
// stream (default 30 s).
func WithRequestTimeout(d time.Duration) Option {
	return func(s *settings) error { s.timeout = d; return nil }
}

// WithPollInterval is how often Watch reads the job when it cannot stream
// events (default 1 s).
func WithPollInterval(d time.Duration) Option {
	return func(s *settings) error { s.poll = d; return nil }
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option {
	return func(s *settings) error { s.userAgent = ua; return nil }
}

// New makes a client.
func New(opts ...Option) (*Client, error) {
	s := settings{base: DefaultBaseURL, retry: DefaultRetryPolicy, timeout: 30 * time.Second, poll: time.Second, userAgent: "provisioner-client"}
	for _, o := range opts {
		if err := o(&s); err != nil {
			return nil, err
		}
	}
	base, err := url.Parse(strings.TrimRight(s.base, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("base URL %q: want http(s)://host[:port]", s.base)
	}
	if s.hc != nil && s.tls != nil {
		return nil, errors.New("WithTLSConfig and WithHTTPClient: configure TLS on the HTTP client's transport")
	}
	hc := s.hc
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = s.tls
		hc = &http.Client{Transport: tr}
	}
	return &Client{base: base, hc: hc, token: s.token, retry: s.retry, timeout: s.timeout, poll: s.poll, userAgent: s.userAgent}, nil
}

// BaseURL is the API's address.
func (c *Client) BaseURL() string { return c.base.String() }

// call is one logical request.
type call struct {
	method, path string
	query        url.Values
	body         any
	header       http.Header
	// contentType of a raw body (an upload); JSON otherwise.
	contentType string
	// length of a raw body (its Content-Length).
	length int64
}

// do sends cl, retrying on 503 and connection errors, and decodes a
// success into out (nil: discard).
func (c *Client) do(ctx context.Context, cl call, out any) (http.Header, error) {
	var body []byte
	if cl.body != nil {
		var err error
		if body, err = json.Marshal(cl.body); err != nil {
			return nil, err
		}
	}
	for attempt := 1; ; attempt++ {
		resp, err := c.send(ctx, cl, body, c.timeout)
		wait, retry := c.retryable(resp, err, attempt)
		if !retry {
			if err != nil {
				return nil, c.unreachable(ctx, cl, attempt, err)
			}
			defer resp.Body.Close()
			return resp.Header, decode(resp, cl, out)
		}
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// send makes one attempt; with timeout > 0 the attempt is bounded (its
// body included: the caller reads it before the context ends).
func (c *Client) send(ctx context.Context, cl call, body []byte, timeout time.Duration) (*http.Response, error) {
	u := *c.base
	u.Path = c.base.Path + cl.path
	u.RawQuery = cl.query.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		// The body is read under this context: cancel when it is closed.
		resp, err := c.sendReq(ctx, cl, &u, rd)
		if err != nil {
			cancel()
			return nil, err
		}
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
		return resp, nil
	}
	return c.sendReq(ctx, cl, &u, rd)
}

func (c *Client) sendReq(ctx context.Context, cl call, u *url.URL, rd io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, cl.method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	if cl.length > 0 {
		req.ContentLength = cl.length
	}
	if rd != nil {
		req.Header.Set("Content-Type", cmp.Or(cl.contentType, "application/json"))
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if c.token != nil {
		tok, err := c.token()
		if err != nil {
			return nil, fmt.Errorf("mint API token: %w", err)
		}
		req.Header.Set(rest.HeaderToken, tok)
	}
	return c.hc.Do(req)
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (r *cancelOnClose) Close() error {
	err := r.ReadCloser.Close()
	r.cancel()
	return err
}

// retryable says whether an attempt's outcome is retried, and after how long.
func (c *Client) retryable(resp *http.Response, err error, attempt int) (time.Duration, bool) {
	if attempt >= c.retry.Attempts {
		return 0, false
	}
	switch {
	case err != nil:
		// A cancelled or expired caller context is not the API's fault.
		if errors.Is(err, context.Canceled) {
			return 0, false
		}
		return c.retry.backoff(attempt), true
	case resp.StatusCode == http.StatusServiceUnavailable:
		wait := c.retry.backoff(attempt)
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			wait = min(time.Duration(s)*time.Second, c.retry.MaxBackoff)
		}
		return wait, true
	}
	return 0, false
}

func (c *Client) unreachable(ctx context.Context, cl call, attempts int, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return &UnreachableError{URL: c.base.String() + cl.path, Attempts: attempts, Err: err}
}

// decode reads a success into out or an error answer into an *APIError.
func decode(resp *http.Response, cl call, out any) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read the answer: %w", cl.method, cl.path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: the answer is not the expected JSON: %w", cl.method, cl.path, err)
		}
		return nil
	}
	e := &APIError{Status: resp.StatusCode, RequestID: resp.Header.Get(rest.HeaderRequestID), Method: cl.method, Path: cl.path}
	if json.Unmarshal(data, &e.Body) != nil || e.Body.Code != resp.StatusCode {
		e.Body = rest.Error{Code: resp.StatusCode}
	}
	return e
}
