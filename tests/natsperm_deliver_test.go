package tests

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

// permConsumerCreate is a consumer create request of hv-01's user on stream,
// filtered on its own subjects, that delivers to deliver ("" for a pull
// consumer): the subject and the body nats.go would send.
func permConsumerCreate(stream, name, filter, deliver string) (string, []byte) {
	cfg := map[string]any{"name": name, "filter_subject": filter, "ack_policy": "none", "deliver_policy": "all"}
	if deliver != "" {
		cfg["deliver_subject"] = deliver
	}
	body, _ := json.Marshal(map[string]any{"stream_name": stream, "config": cfg})
	return "$JS.API.CONSUMER.CREATE." + stream + "." + name + "." + filter, body
}

// permConsumerCounts is the number of consumers of each stream hv-01 could
// target.
func permConsumerCounts(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, name := range []string{messaging.JobStream, "KV_" + messaging.JobBucket, "KV_" + messaging.CacheBucket} {
		st, err := js.Stream(permCtx(t, 5*time.Second), name)
		require.NoError(t, err)
		info, err := st.Info(permCtx(t, 5*time.Second))
		require.NoError(t, err)
		out[name] = info.State.Consumers
	}
	return out
}

// permNoDeliveryToOtherHosts is the attack on deliver subjects: hv-01's user
// creating consumers that deliver its own records or jobs to hv-02's control
// and event subjects (nats-server does not check a deliver subject against
// the creator's permissions), creating consumers in a loop, and publishing
// on hv-02's control subjects. All are refused; nothing reaches hv-02.
func permNoDeliveryToOtherHosts(t *testing.T, url string, keys permKeys, nc1 *nats.Conn, errs1 *permErrs, adminJS jetstream.JetStream) {
	s := messaging.NewSubjects("")
	adminNC, _, _ := permConnect(t, url, natsconn.Config{CredsFile: keys.admin, Name: "admin-watch"})
	watch, err := adminNC.SubscribeSync(s.Control("hv-02"))
	require.NoError(t, err)
	events, err := adminNC.SubscribeSync(s.Prefix + ".events.hv-02.>")
	require.NoError(t, err)
	require.NoError(t, adminNC.Flush())
	before := permConsumerCounts(t, adminJS)

	// (a) Push consumers on its own keys and jobs, delivering to hv-02.
	var wg sync.WaitGroup
	var refused []string
	targets := []struct{ stream, name, filter string }{
		{"KV_" + messaging.JobBucket, "evil-jobs", "$KV." + messaging.JobBucket + ".hv-01.>"},
		{"KV_" + messaging.CacheBucket, "evil-cache", "$KV." + messaging.CacheBucket + ".hv-01.>"},
		{messaging.JobStream, messaging.ConsumerName("hv-01"), s.JobsFilter("hv-01")},
		{messaging.JobStream, "evil-queue", s.JobsFilter("hv-01")},
	}
	for i, tg := range targets {
		for j, deliver := range []string{s.CacheDelete("hv-02"), s.Event("hv-02", permJobB)} {
			name := tg.name
			if name != messaging.ConsumerName("hv-01") {
				name = fmt.Sprintf("%s-%d%d", name, i, j)
			}
			subj, body := permConsumerCreate(tg.stream, name, tg.filter, deliver)
			subj = permLocal(subj)
			refused = append(refused, subj)
			wg.Go(func() {
				_, err := nc1.Request(subj, body, time.Second)
				assert.Error(t, err, subj)
			})
		}
	}
	wg.Wait()
	for _, subj := range refused {
		errs1.waitViolation(t, "publish", subj)
	}

	// (b) A loop of consumer creates (pull consumers on its own records):
	// refused from the first, none is created.
	for i := range 50 {
		subj, body := permConsumerCreate("KV_"+messaging.JobBucket, fmt.Sprintf("loop-%d", i), "$KV."+messaging.JobBucket+".hv-01.>", "")
		require.NoError(t, nc1.PublishRequest(permLocal(subj), nc1.NewRespInbox(), body))
	}
	require.NoError(t, nc1.Flush())
	first, _ := permConsumerCreate("KV_"+messaging.JobBucket, "loop-0", "$KV."+messaging.JobBucket+".hv-01.>", "")
	last, _ := permConsumerCreate("KV_"+messaging.JobBucket, "loop-49", "$KV."+messaging.JobBucket+".hv-01.>", "")
	errs1.waitViolation(t, "publish", permLocal(first))
	errs1.waitViolation(t, "publish", permLocal(last))
	require.Equal(t, before, permConsumerCounts(t, adminJS), "hv-01's user created consumers")

	// (c) Control requests and hints for hv-02, published directly.
	for _, subj := range []string{s.CacheDelete("hv-02"), s.JobChanged("hv-02", permJobB)} {
		require.NoError(t, nc1.Publish(subj, []byte(`{"key":"`+strings.Repeat("b", 64)+`","caller":"forged"}`)))
		errs1.waitViolation(t, "publish", subj)
	}

	// Nothing reached hv-02's control or event subjects.
	for _, sub := range []*nats.Subscription{watch, events} {
		m, err := sub.NextMsg(time.Second)
		require.ErrorIs(t, err, nats.ErrTimeout, "a message reached %v", m)
	}
}
