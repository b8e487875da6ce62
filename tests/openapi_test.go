package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner"
	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// Statuses the document declares that no test here can produce: 401 and 403
// need authentication configured, 500 an unexpected NATS error (or a worker
// failing to remove a cached image), and 503 is checked by
// TestOpenAPINATSUnreachable (and, for a stopped worker, by the cache image
// removal in TestOpenAPI).
var unproducible = []int{401, 403, 500, 503}

var registerSSEDecoder sync.Once

// contract checks real requests and responses against api.yaml.
type contract struct {
	t      *testing.T
	e      *env
	doc    *openapi3.T
	router routers.Router
	opts   *openapi3filter.Options
	// seen records the statuses observed per "METHOD /path/template".
	mu   sync.Mutex
	seen map[string]map[int]bool
}

// loadContract loads and validates api.yaml and routes it to e's API.
func loadContract(t *testing.T, e *env) *contract {
	t.Helper()
	registerSSEDecoder.Do(func() {
		// The event stream is checked as text here and event by event in checkEvents.
		openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
	})
	ctx := context.Background()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(provisioner.OpenAPI)
	require.NoError(t, err)
	require.NoError(t, doc.Validate(ctx))
	require.Equal(t, "3.0.3", doc.OpenAPI)
	require.NotEmpty(t, doc.Servers)
	doc.Servers = openapi3.Servers{{URL: e.apiURL}}
	router, err := gorillamux.NewRouter(doc)
	require.NoError(t, err)
	return &contract{t: t, e: e, doc: doc, router: router, seen: map[string]map[int]bool{},
		opts: &openapi3filter.Options{
			AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc,
			IncludeResponseStatus: true,
			MultiError:            true,
		}}
}

// exchange is one request.
type exchange struct {
	method, path string
	// body is sent as application/json when not nil.
	body []byte
	// header is sent as well.
	header map[string]string
	// badRequest: the request itself breaks the document (the server refuses
	// it too); only the response is checked against it.
	badRequest bool
	// unchecked: the request breaks a rule the document states in prose
	// only (data after the JSON object); the request is not checked.
	unchecked bool
	// status is the status the server must answer.
	status int
}

func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	require.NoError(t, err)
	return data
}

// do sends x to the API, checks the request (unless x.badRequest) and the
// response against the document, and returns the response.
func (c *contract) do(x exchange) response {
	t := c.t
	t.Helper()
	newReq := func() *http.Request {
		var rd io.Reader
		if x.body != nil {
			rd = bytes.NewReader(x.body)
		}
		req, err := http.NewRequest(x.method, c.e.apiURL+x.path, rd)
		require.NoError(t, err)
		if x.body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range x.header {
			req.Header.Set(k, v)
		}
		return req
	}
	what := x.method + " " + x.path
	ctx := context.Background()
	vreq := newReq()
	route, params, routeErr := c.router.FindRoute(vreq)
	key := ""
	switch {
	case routeErr == nil:
		key = route.Method + " " + route.Path
		in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: c.opts}
		err := openapi3filter.ValidateRequest(ctx, in)
		if x.unchecked {
			break
		}
		if x.badRequest {
			require.Error(t, err, "%s: the document accepts a request the server refuses", what)
		} else {
			require.NoError(t, err, "%s: the request breaks the document", what)
		}
	case x.status == http.StatusNotFound && routeErr == routers.ErrPathNotFound:
		route, key = c.unmatched(x, http.StatusNotFound, "NotFound"), "unmatched path"
	case x.status == http.StatusMethodNotAllowed && routeErr == routers.ErrMethodNotAllowed:
		route, key = c.unmatched(x, http.StatusMethodNotAllowed, "MethodNotAllowed"), "unmatched method"
	default:
		t.Fatalf("%s: %v", what, routeErr)
	}

	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(newReq())
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, x.status, resp.StatusCode, "%s: body %s", what, data)
	require.NotEmpty(t, resp.Header.Get("X-Request-ID"), what)

	vreq = newReq()
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: c.opts},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                c.opts,
	}
	in.SetBodyBytes(data)
	require.NoError(t, openapi3filter.ValidateResponse(ctx, in), "%s: the response breaks the document: %s %s", what, resp.Header, data)

	c.mu.Lock()
	if c.seen[key] == nil {
		c.seen[key] = map[int]bool{}
	}
	c.seen[key][resp.StatusCode] = true
	c.mu.Unlock()
	return response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// unmatched is a route for a request the API serves no operation for: its
// only response is the document's reusable response name for status.
func (c *contract) unmatched(x exchange, status int, name string) *routers.Route {
	ref := c.doc.Components.Responses[name]
	require.NotNil(c.t, ref, "components.responses.%s", name)
	op := openapi3.NewOperation()
	op.Responses = openapi3.NewResponses(openapi3.WithStatus(status, ref))
	return &routers.Route{Spec: c.doc, Path: x.path, PathItem: &openapi3.PathItem{}, Method: x.method, Operation: op}
}

// checkEvents checks each event of a text/event-stream body: its fields,
// and its data against the ProgressEvent schema. It returns the statuses.
func (c *contract) checkEvents(body []byte) []string {
	t := c.t
	t.Helper()
	schema := c.doc.Components.Schemas["ProgressEvent"]
	require.NotNil(t, schema)
	var statuses []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	fields := map[string]string{}
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ":") {
			continue
		}
		if line != "" {
			name, value, ok := strings.Cut(line, ": ")
			require.True(t, ok, "event line %q", line)
			fields[name] = value
			continue
		}
		require.Equal(t, "progress", fields["event"], "event %v", fields)
		require.Regexp(t, `^[0-9]+$`, fields["id"])
		var v any
		require.NoError(t, json.Unmarshal([]byte(fields["data"]), &v))
		require.NoError(t, schema.Value.VisitJSON(v, openapi3.VisitAsResponse(), openapi3.MultiErrors()), "event data %s", fields["data"])
		statuses = append(statuses, v.(map[string]any)["status"].(string))
		fields = map[string]string{}
	}
	require.NoError(t, sc.Err())
	require.Empty(t, fields, "an unterminated event")
	return statuses
}

// requireAllResponsesCarryRequestID checks the document declares a required
// X-Request-ID on every response, so every check above includes it.
func (c *contract) requireAllResponsesCarryRequestID() {
	t := c.t
	for path, item := range c.doc.Paths.Map() {
		for method, op := range item.Operations() {
			require.NotEmpty(t, op.OperationID, "%s %s", method, path)
			for status, ref := range op.Responses.Map() {
				h := ref.Value.Headers["X-Request-ID"]
				require.NotNil(t, h, "%s %s %s declares no X-Request-ID", method, path, status)
				require.True(t, h.Value.Required, "%s %s %s: X-Request-ID is not required", method, path, status)
				if status == "202" {
					require.NotNil(t, ref.Value.Headers["Location"], "%s %s 202 declares no Location", method, path)
				}
			}
			p := slices.IndexFunc(op.Parameters, func(p *openapi3.ParameterRef) bool { return p.Value.In == "header" && p.Value.Name == "X-Request-ID" })
			require.GreaterOrEqual(t, p, 0, "%s %s takes no X-Request-ID parameter", method, path)
			open := op.Security != nil && len(*op.Security) == 0
			require.Equal(t, !strings.HasPrefix(path, "/api/v1/") || path == "/api/v1/openapi.yaml", open, "%s %s: security", method, path)
		}
	}
	for _, name := range []string{"NotFound", "MethodNotAllowed"} {
		require.True(t, c.doc.Components.Responses[name].Value.Headers["X-Request-ID"].Value.Required, name)
	}
	require.Contains(t, c.doc.Components.SecuritySchemes, "ApiToken")
	require.Contains(t, c.doc.Components.SecuritySchemes, "BearerToken")
}

// requireCoverage checks every operation was called and every status the
// document declares was seen, except those no test here can produce.
func (c *contract) requireCoverage() {
	t := c.t
	for path, item := range c.doc.Paths.Map() {
		for method, op := range item.Operations() {
			key := method + " " + path
			require.NotEmpty(t, c.seen[key], "%s was never called", key)
			for status := range op.Responses.Map() {
				var code int
				_, err := fmt.Sscan(status, &code)
				require.NoError(t, err)
				if !slices.Contains(unproducible, code) {
					require.True(t, c.seen[key][code], "%s never answered %d", key, code)
				}
			}
		}
	}
	require.True(t, c.seen["unmatched path"][http.StatusNotFound])
	require.True(t, c.seen["unmatched method"][http.StatusMethodNotAllowed])
}

func TestOpenAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{apiEnv: []string{"PROVISIONER_CONTENT_MAX_BYTES=4096"}})
	c := loadContract(t, e)
	c.requireAllResponsesCarryRequestID()

	// The served document is the embedded one.
	r := c.do(exchange{method: http.MethodGet, path: "/api/v1/openapi.yaml", status: 200})
	require.Equal(t, "application/yaml", r.Header.Get("Content-Type"))
	require.Equal(t, provisioner.OpenAPI, r.Body)

	// Health, readiness and metrics.
	for _, p := range []string{"/health", "/healthz", "/livez"} {
		r := c.do(exchange{method: http.MethodGet, path: p, status: 200})
		require.Equal(t, "healthy", r.json(t)["status"], "%s: %s", p, r.Body)
	}
	r = c.do(exchange{method: http.MethodGet, path: "/health", header: map[string]string{"X-Request-ID": "mine-1"}, status: 200})
	require.Equal(t, "mine-1", r.Header.Get("X-Request-ID"))
	c.do(exchange{method: http.MethodGet, path: "/readyz", status: 200})

	// A provisioning job, followed over SSE while it runs, then read.
	qcow2, _ := image(t, 16<<20, 31)
	url := e.upload("images/oas.qcow2", qcow2, true)
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 202, header: map[string]string{"X-Request-ID": "oas-1"},
		body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "vm-oas", "volume_size_gb": 1, "image_type": "qcow2", "correlation_id": "corr-oas", "hypervisor": "h1"})})
	require.Equal(t, "oas-1", r.Header.Get("X-Request-ID"))
	id := r.json(t)["job_id"].(string)
	require.Equal(t, "/api/v1/jobs/"+id, r.Header.Get("Location"))
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + id, status: 200})
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + id + "/events", status: 200})
	require.Equal(t, "text/event-stream", r.Header.Get("Content-Type"))
	statuses := c.checkEvents(r.Body)
	require.NotEmpty(t, statuses)
	require.Equal(t, "completed", statuses[len(statuses)-1])
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + id, status: 200})
	require.Equal(t, "completed", r.json(t)["status"])
	// The stream of a job that ended: its final state.
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + id + "/events", status: 200})
	require.Equal(t, []string{"completed"}, c.checkEvents(r.Body))
	// An upper-case id is the same job.
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + strings.ToUpper(id), status: 200})

	// Cancelling a job that ended.
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs/" + id + "/cancel", status: 400})
	require.Equal(t, "failed to cancel job", r.json(t)["error"])

	// The job list.
	require.Eventually(t, func() bool {
		r := c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs?hypervisor=h1&status=completed,cancelled&limit=5", status: 200})
		return r.json(t)["count"].(float64) > 0
	}, 10*time.Second, 100*time.Millisecond)
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs", status: 200})
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs?status=done", status: 400, badRequest: true})

	// The host registry.
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/hosts", status: 200})
	require.Equal(t, "h1", r.json(t)["hosts"].([]any)[0].(map[string]any)["host"])

	// The cache, and a prewarm job.
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/cache/images?hypervisor=h1&offset=0&limit=10", status: 200})
	require.EqualValues(t, 1, r.json(t)["count"])
	c.do(exchange{method: http.MethodGet, path: "/api/v1/cache/images", status: 200})
	c.do(exchange{method: http.MethodGet, path: "/api/v1/cache/images?offset=5", status: 200})
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/cache/fetch", status: 202,
		body: jsonBody(t, map[string]any{"image_url": e.upload("images/oas-fetch.qcow2", qcow2, true), "correlation_id": "prewarm"})})
	fetchID := r.json(t)["job_id"].(string)
	require.Equal(t, "/api/v1/jobs/"+fetchID, r.Header.Get("Location"))
	e.waitStatus(fetchID, "completed")
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + fetchID, status: 200})
	require.Equal(t, "cache_fetch", r.json(t)["kind"])

	// Idempotent submissions: the same request with the same key is the same
	// job, a different one is a 422, an invalid key a 400.
	idem := map[string]any{"image_url": url, "volume_name": "vm-oas-idem", "volume_size_gb": 1}
	key := map[string]string{"Idempotency-Key": "oas deploy-1"}
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 202, header: key, body: jsonBody(t, idem)})
	idemID := r.json(t)["job_id"].(string)
	require.Empty(t, r.Header.Get("Idempotent-Replayed"))
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 202, header: key, body: jsonBody(t, idem)})
	require.Equal(t, idemID, r.json(t)["job_id"])
	require.Equal(t, "true", r.Header.Get("Idempotent-Replayed"))
	require.Equal(t, "/api/v1/jobs/"+idemID, r.Header.Get("Location"))
	idem["volume_size_gb"] = 2
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 422, header: key, body: jsonBody(t, idem)})
	require.Equal(t, "invalid request", r.json(t)["error"])
	require.Contains(t, r.json(t)["message"], idemID)
	for _, bad := range []string{strings.Repeat("k", 256), "tab\there"} {
		r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 400, badRequest: true,
			header: map[string]string{"Idempotency-Key": bad}, body: jsonBody(t, idem)})
		require.Equal(t, "invalid request", r.json(t)["error"])
	}
	e.waitStatus(idemID, "completed")
	warm := map[string]any{"image_url": url, "correlation_id": "oas-warm"}
	wkey := map[string]string{"Idempotency-Key": "oas-warm-1"}
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/cache/fetch", status: 202, header: wkey, body: jsonBody(t, warm)})
	warmID := r.json(t)["job_id"].(string)
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/cache/fetch", status: 202, header: wkey, body: jsonBody(t, warm)})
	require.Equal(t, warmID, r.json(t)["job_id"])
	require.Equal(t, "true", r.Header.Get("Idempotent-Replayed"))
	warm["correlation_id"] = "oas-warm-2"
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/cache/fetch", status: 422, header: wkey, body: jsonBody(t, warm)})
	require.Equal(t, "invalid request", r.json(t)["error"])
	e.waitStatus(warmID, "completed")

	// One writer per volume: a host whose worker is down keeps the first job
	// pending, so a second one for the same volume is a conflict.
	e.startWorker("h2").stop()
	busy := map[string]any{"image_url": url, "volume_name": "vm-oas-busy", "volume_size_gb": 1, "hypervisor": "h2"}
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 202, body: jsonBody(t, busy)})
	busyID := r.json(t)["job_id"].(string)
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 409, body: jsonBody(t, busy)})
	require.Equal(t, "conflict", r.json(t)["error"])
	c.do(exchange{method: http.MethodPut, path: "/api/v1/volumes/h2/vm-oas-busy/content", status: 409, body: []byte("x"),
		header: map[string]string{"Content-Type": "application/octet-stream"}})
	require.Contains(t, r.json(t)["message"], busyID+" (pending)")
	c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs/" + busyID + "/cancel", status: 200})

	// Removing a cached image, on a host whose worker writes slowly so the
	// image stays in use for a while.
	w3 := e.startWorker("h3", slow)
	delImage, _ := image(t, 64<<20, 33)
	delURL := e.upload("images/oas-del.qcow2", delImage, true)
	digest, err := testenv.FileSHA256(delImage)
	require.NoError(t, err)
	delPath := "/api/v1/cache/images/" + digest + "?hypervisor=h3"
	r = c.do(exchange{method: http.MethodDelete, path: delPath, status: 404})
	require.Equal(t, "image not found", r.json(t)["error"])
	for _, x := range []exchange{
		{path: "/api/v1/cache/images/abc?hypervisor=h3", badRequest: true},
		{path: "/api/v1/cache/images/" + digest + "z?hypervisor=h3", badRequest: true},
		{path: "/api/v1/cache/images/" + digest + "?hypervisor=Not_A_Host", badRequest: true},
		{path: "/api/v1/cache/images/" + digest + "?hypervisor=nowhere"},
	} {
		x.method, x.status = http.MethodDelete, 400
		r = c.do(x)
		require.Equal(t, "invalid request", r.json(t)["error"], x.path)
	}
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 202,
		body: jsonBody(t, map[string]any{"image_url": delURL, "volume_name": "vm-oas-del", "volume_size_gb": 1, "hypervisor": "h3"})})
	delID := r.json(t)["job_id"].(string)
	// Populating, with the download committed to the cache (the record then
	// names the cached file; a cold image streams into the volume while it
	// downloads, and is in the cache only once its digest verified).
	e.waitJob(delID, 30*time.Second, func(j job) bool {
		return j.Progress != nil && j.Progress.Stage == "populating" && j.ImagePath != ""
	})
	r = c.do(exchange{method: http.MethodDelete, path: delPath, status: 409})
	require.Equal(t, "conflict", r.json(t)["error"])
	e.waitStatus(delID, "completed")
	r = c.do(exchange{method: http.MethodDelete, path: "/api/v1/cache/images/" + strings.ToUpper(digest) + "?hypervisor=h3", status: 200})
	require.Equal(t, map[string]any{"status": "deleted", "checksum": digest, "hypervisor": "h3"}, r.json(t))
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/cache/images?hypervisor=h3", status: 200})
	require.EqualValues(t, 0, r.json(t)["count"])
	w3.stop()
	r = c.do(exchange{method: http.MethodDelete, path: delPath, status: 503})
	require.Equal(t, "service unavailable", r.json(t)["error"])

	// Jobs published straight to NATS for a host with no worker: a valid one
	// is pending and can be cancelled; an invalid one has a failed record
	// that repeats what the message said.
	js, err := jetstream.New(e.connectNATS())
	require.NoError(t, err)
	subjects := messaging.Subjects{Prefix: messaging.DefaultPrefix}
	pending, broken := "0b7a1c3e-5d2f-4e8a-9c1b-2a3d4e5f6a7b", "1c8b2d4f-6e3a-4f9b-8d2c-3b4e5f6a7b8c"
	_, err = js.Publish(context.Background(), subjects.Job("ghost", pending),
		jsonBody(t, map[string]any{"job_id": pending, "image_url": url, "volume_name": "vm-ghost", "volume_size_gb": 2}))
	require.NoError(t, err)
	_, err = js.Publish(context.Background(), subjects.Job("ghost", broken),
		[]byte(`{"job_id":"`+broken+`","kind":"weird","image_url":"ftp://x","image_type":"vmdk","volume_size_gb":-5,"colour":1}`))
	require.NoError(t, err)
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + pending, status: 200})
	require.Equal(t, "pending", r.json(t)["status"])
	r = c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + broken, status: 200})
	require.Equal(t, "failed", r.json(t)["status"])
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs/" + pending + "/cancel", status: 200})
	require.Equal(t, map[string]any{"status": "cancelled", "job_id": pending}, r.json(t))
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + pending, status: 200})
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + pending + "/events", status: 200})

	// Requests the server refuses. Those the document can tell are wrong
	// must break it too; the others (they need the server's state) not.
	other := "http://elsewhere.example:9000/images/x.qcow2"
	for _, x := range []exchange{
		{body: jsonBody(t, map[string]any{"volume_size_gb": 1}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v"}), badRequest: true},
		{body: []byte(`{"image_url": `), badRequest: true},
		{body: []byte(`{"image_url": "` + url + `", "volume_name": "v", "volume_size_gb": 1} {}`), unchecked: true},
		{body: []byte{}, badRequest: true},
		{body: []byte(`[1]`), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": "ten"}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1.5}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1, "colour": "red"}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 0}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 65537}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "../etc/passwd", "volume_size_gb": 1}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "-v", "volume_size_gb": 1}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": strings.Repeat("v", 128), "volume_size_gb": 1}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1, "image_type": "vmdk"}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1, "correlation_id": strings.Repeat("c", 129)}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1, "hypervisor": "Not_A_Host"}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": "file:///etc/passwd", "volume_name": "v", "volume_size_gb": 1}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": url + "?x=1", "volume_name": "v", "volume_size_gb": 1}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": "http://user:pw@" + e.minio.Endpoint + "/" + e.bucket + "/x.qcow2", "volume_name": "v", "volume_size_gb": 1}), badRequest: true},
		{body: jsonBody(t, map[string]any{"image_url": other, "volume_name": "v", "volume_size_gb": 1})},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "snapshot-1", "volume_size_gb": 1})},
		{body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1, "hypervisor": "nowhere"})},
	} {
		x.method, x.path, x.status = http.MethodPost, "/api/v1/jobs", 400
		r := c.do(x)
		require.Equal(t, "invalid request", r.json(t)["error"], "%s", x.body)
	}
	for _, p := range []string{"/api/v1/jobs", "/api/v1/cache/fetch"} {
		c.do(exchange{method: http.MethodPost, path: p, status: 413, badRequest: true, body: []byte(strings.Repeat(" ", 70<<10) + "{}")})
		c.do(exchange{method: http.MethodPost, path: p, status: 415, badRequest: true, body: []byte(`{}`), header: map[string]string{"Content-Type": "text/plain"}})
	}
	c.do(exchange{method: http.MethodPost, path: "/api/v1/cache/fetch", status: 400, badRequest: true, body: jsonBody(t, map[string]any{})})
	c.do(exchange{method: http.MethodPost, path: "/api/v1/cache/fetch", status: 400, badRequest: true, body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v"})})
	c.do(exchange{method: http.MethodPost, path: "/api/v1/cache/fetch", status: 400, body: jsonBody(t, map[string]any{"image_url": url, "hypervisor": "nowhere"})})
	for _, q := range []string{"limit=0", "limit=1001", "limit=ten", "offset=-1"} {
		c.do(exchange{method: http.MethodGet, path: "/api/v1/cache/images?" + q, status: 400, badRequest: true})
	}
	c.do(exchange{method: http.MethodGet, path: "/api/v1/cache/images?hypervisor=zz", status: 400})
	for _, p := range []string{"/api/v1/jobs/not-a-uuid", "/api/v1/jobs/not-a-uuid/events"} {
		c.do(exchange{method: http.MethodGet, path: p, status: 400, badRequest: true})
	}
	c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs/not-a-uuid/cancel", status: 400, badRequest: true})

	// Uploads and cloud-init seeds; their records follow the document too.
	upload := []byte("raw bytes for a volume")
	octet := map[string]string{"Content-Type": "application/octet-stream", "X-Content-SHA256": sha(upload)}
	r = c.do(exchange{method: http.MethodPut, path: "/api/v1/volumes/h1/oas-up/content?correlation_id=up-1", status: 202, body: upload, header: octet})
	upID := r.json(t)["job_id"].(string)
	ukey := map[string]string{"Content-Type": "application/octet-stream", "Idempotency-Key": "oas-up-key"}
	c.do(exchange{method: http.MethodPut, path: "/api/v1/volumes/h1/oas-up3/content", status: 202, body: upload, header: ukey})
	c.do(exchange{method: http.MethodPut, path: "/api/v1/volumes/h1/oas-up3/content", status: 422, body: append(upload, '!'), header: ukey})
	c.do(exchange{method: http.MethodPut, path: "/api/v1/volumes/h1/oas-big/content", status: 413, body: make([]byte, 5000),
		header: map[string]string{"Content-Type": "application/octet-stream"}})
	c.do(exchange{method: http.MethodPut, path: "/api/v1/volumes/h1/oas-up2/content", status: 400, body: upload,
		header: map[string]string{"Content-Type": "application/octet-stream", "X-Content-SHA256": sha([]byte("other"))}})
	c.do(exchange{method: http.MethodPut, path: "/api/v1/volumes/h1/oas-up2/content?volume_size_gb=0", status: 400, badRequest: true, body: upload, header: octet})
	r = c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 202, body: jsonBody(t, map[string]any{"volume_name": "oas-ci",
		"cloud_init": map[string]any{"user_data": "#cloud-config\n", "network_config": "version: 2\n"}})})
	ciID := r.json(t)["job_id"].(string)
	c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs", status: 400, badRequest: true, body: jsonBody(t, map[string]any{"volume_name": "oas-ci",
		"volume_size_gb": 1, "cloud_init": map[string]any{}})})
	for _, id := range []string{upID, ciID} {
		e.waitStatus(id, "completed")
		c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + id, status: 200})
	}

	// Unknown jobs, paths and methods.
	missing := "550e8400-e29b-41d4-a716-446655440000"
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + missing, status: 404})
	c.do(exchange{method: http.MethodPost, path: "/api/v1/jobs/" + missing + "/cancel", status: 404})
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/" + missing + "/events", status: 404})
	c.do(exchange{method: http.MethodGet, path: "/api/v1/nothing", status: 404})
	c.do(exchange{method: http.MethodGet, path: "/api/v1/jobs/", status: 404})
	c.do(exchange{method: http.MethodDelete, path: "/api/v1/jobs", status: 405})
	c.do(exchange{method: http.MethodPatch, path: "/api/v1/jobs", status: 405})
	c.do(exchange{method: http.MethodPut, path: "/health", status: 405})
	c.do(exchange{method: http.MethodPost, path: "/api/v1/openapi.yaml", status: 405})

	// Metrics last, so they count everything above.
	r = c.do(exchange{method: http.MethodGet, path: "/metrics", status: 200})
	require.True(t, strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain"), r.Header.Get("Content-Type"))
	require.Contains(t, string(r.Body), `libvirt_volume_provisioner_requests_total{endpoint="/api/v1/openapi.yaml",method="GET",status="200"} 1`)

	c.requireCoverage()
}

// TestOpenAPINATSUnreachable checks the 503 answers (and the degraded health)
// against the document: the API runs against an external NATS server that
// is then stopped.
func TestOpenAPINATSUnreachable(t *testing.T) {
	t.Parallel()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	port, err := testenv.FreePort()
	require.NoError(t, err)
	e := &env{t: t, dir: t.TempDir(), apiURL: "http://127.0.0.1:" + itoa(port)}
	e.api = startProc(t, "api", e.dir+"/api.log", []string{"PROVISIONER_HTTP_ADDR=127.0.0.1:" + itoa(port), "PROVISIONER_NATS_URL=" + ns.ClientURL(),
		"PROVISIONER_DEFAULT_HYPERVISOR=h1", "MINIO_ENDPOINT=127.0.0.1:9"})
	e.waitHTTP(e.apiURL + "/livez")
	c := loadContract(t, e)
	ns.Shutdown()
	ns.WaitForShutdown()
	time.Sleep(200 * time.Millisecond)

	url := "http://127.0.0.1:9/images/x.qcow2"
	id := "550e8400-e29b-41d4-a716-446655440000"
	for _, x := range []exchange{
		{method: http.MethodPost, path: "/api/v1/jobs", body: jsonBody(t, map[string]any{"image_url": url, "volume_name": "v", "volume_size_gb": 1})},
		{method: http.MethodPost, path: "/api/v1/cache/fetch", body: jsonBody(t, map[string]any{"image_url": url})},
		{method: http.MethodGet, path: "/api/v1/jobs/" + id},
		{method: http.MethodPost, path: "/api/v1/jobs/" + id + "/cancel"},
		{method: http.MethodGet, path: "/api/v1/jobs/" + id + "/events"},
		{method: http.MethodGet, path: "/api/v1/cache/images"},
		{method: http.MethodGet, path: "/api/v1/hosts"},
		{method: http.MethodGet, path: "/api/v1/jobs"},
		{method: http.MethodDelete, path: "/api/v1/cache/images/" + strings.Repeat("ab", 32)},
		{method: http.MethodGet, path: "/readyz"},
	} {
		x.status = http.StatusServiceUnavailable
		r := c.do(x)
		require.Equal(t, "service unavailable", r.json(t)["error"])
	}
	r := c.do(exchange{method: http.MethodGet, path: "/health", status: 200})
	require.Equal(t, map[string]any{"nats": "unreachable"}, r.json(t)["checks"])
	require.Equal(t, "degraded", r.json(t)["status"])
	c.do(exchange{method: http.MethodGet, path: "/metrics", status: 200})
	c.do(exchange{method: http.MethodGet, path: "/api/v1/openapi.yaml", status: 200})
}
