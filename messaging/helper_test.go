package messaging_test

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/libvirt-volume-provisioner/provisioner/internal/testenv"
)

// startJetStream runs an in-process nats-server with JetStream for one test.
func startJetStream(t *testing.T) jetstream.JetStream { return testenv.JetStream(t) }
