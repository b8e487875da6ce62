//go:build tools

// Package natscli pins the nats CLI used in subjects.md; build it with
// scripts/install-nats-cli.sh. It is a module of its own because natscli's
// dependencies are missing from the checksum database: this module's go.sum
// is the record later builds verify against.
package natscli

import _ "github.com/nats-io/natscli/nats"
