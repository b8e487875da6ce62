package embedded

import (
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/libvirt-volume-provisioner/provisioner/messaging"
)

// HostAPIPrefix is the JetStream API prefix of a worker in a host account
// (PROVISIONER_NATS_JS_PREFIX): the host account has no JetStream of its
// own and imports the PROVISIONER account's API under this prefix. KV
// writes go to HostAPIPrefix + ".$KV.<bucket>.<key>" (nats.go puts the API
// prefix in front of KV subjects whenever it is not the default).
const HostAPIPrefix = "$JS.PROV.API"

// MainAccount is the account of the streams, the buckets, the API and the
// operators in deploy/nats (natsauth writes its JWT).
const MainAccount = "PROVISIONER"

// ServiceImport is one service a host account imports from MainAccount:
// Subject in MainAccount, seen as To in the host account ("" or equal to
// Subject: the same name). MultiResponse marks the services that answer
// with several messages (pull requests): their export needs
// "response_type: stream".
type ServiceImport struct {
	Subject, To   string
	MultiResponse bool
}

// HostAccount is the NATS account of one hypervisor's worker in deploy/nats
// (natsauth turns it into the account's JWT and its worker's scoped signing
// key).
//
// nats-server checks a client's publish permission on a message's subject,
// never on its reply subject, and JetStream answers to whatever reply
// subject a request names. In a shared account a worker could thus have the
// server write the answer to one of its own requests (a direct get of its
// own key, a publish ack, a pulled job) on another host's KV keys or
// control subjects. A request that crosses a service import gets a fresh
// reply subject in the exporting account, and its answers go back to the
// importing account: whatever reply subject the worker names, the answer
// lands in its own account, where no stream and no other host listens.
type HostAccount struct {
	// Name is the account's name, e.g. HV_01 for host hv-01.
	Name string
	// Host is the hypervisor's host token.
	Host string
	// Imports are the services imported from MainAccount: exactly what
	// WorkerPermissions allows in a shared account, the JetStream API and
	// KV subjects under HostAPIPrefix.
	Imports []ServiceImport
	// Control is the subject the host account exports as a service to
	// MainAccount (control requests and cancel hints from the API).
	Control string
	// Permissions are the worker user's permissions inside its account:
	// the local names of Imports, its inbox and its control subjects.
	Permissions *server.Permissions
}

// NewHostAccount is the account of host's worker with subject prefix prefix
// (empty: messaging.DefaultPrefix).
func NewHostAccount(prefix, host string) HostAccount {
	if prefix == "" {
		prefix = messaging.DefaultPrefix
	}
	a := HostAccount{Name: AccountName(host), Host: host, Control: prefix + ".control." + host + ".>"}
	next := "$JS.API.CONSUMER.MSG.NEXT."
	var local []string
	for _, subj := range workerPublishes(prefix, host) {
		im := ServiceImport{Subject: subj, To: LocalSubject(subj), MultiResponse: strings.HasPrefix(subj, next)}
		a.Imports = append(a.Imports, im)
		local = append(local, im.To)
	}
	a.Permissions = workerPermissions(prefix, host, local)
	return a
}

// AccountName is the host account's name: host in upper case with dashes
// as underscores (hv-01: HV_01).
func AccountName(host string) string {
	return strings.ReplaceAll(strings.ToUpper(host), "-", "_")
}

// LocalSubject is the name in a host account of MainAccount's subject subj:
// the JetStream API and KV subjects move under HostAPIPrefix, all others
// (acks, events, API requests) keep their names.
func LocalSubject(subj string) string {
	switch {
	case strings.HasPrefix(subj, "$JS.API."):
		return HostAPIPrefix + strings.TrimPrefix(subj, "$JS.API")
	case strings.HasPrefix(subj, "$KV."):
		return HostAPIPrefix + "." + subj
	}
	return subj
}
