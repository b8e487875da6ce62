package natsauth

import (
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

// Names of the operator and the accounts (the JWTs' name fields; accounts
// are identified by their public keys).
const (
	OperatorName  = "provisioner"
	SystemAccount = "SYS"
)

// TagRevoked marks a host account that was revoked.
const TagRevoked = "provisioner-revoked"

// APIPermissions are the API user's permissions in PROVISIONER with subject
// prefix prefix: the whole JetStream API and every bucket of the account,
// publishing jobs and control requests for any host, and answering the
// workers' requests once each.
func APIPermissions(prefix string) jwt.Permissions {
	if prefix == "" {
		prefix = messaging.DefaultPrefix
	}
	var p jwt.Permissions
	p.Pub.Allow.Add(
		// Stream and bucket creation and updates, stream and consumer info,
		// direct gets, ordered consumers for watches and listings.
		"$JS.API.>",
		// Jobs for any host.
		prefix+".jobs.>",
		// Control requests to workers and cancel hints.
		prefix+".control.>",
		// Flow-control replies of watches.
		"$JS.FC.>",
		// Answers to the workers' requests (their inboxes).
		"_INBOX_worker.>",
		// Uploads into the hosts' content buckets (Object Stores).
		"$O.>",
	)
	for _, b := range []string{messaging.JobBucket, messaging.CacheBucket, messaging.HostBucket, messaging.VolumeBucket, messaging.IdempotencyBucket} {
		p.Pub.Allow.Add("$KV." + b + ".>")
	}
	p.Sub.Allow.Add("_INBOX.>", prefix+".events.>", prefix+".api.hosts.>")
	// Requests from host accounts arrive with a reply subject _R_.… of this
	// account: answer each once.
	p.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}
	return p
}

// mainExports are the services PROVISIONER exports to the host accounts
// (each imports only its own host's part of them: the imports, not the
// exports, confine a worker). Pull requests are answered with several
// messages.
func mainExports(prefix string) jwt.Exports {
	if prefix == "" {
		prefix = messaging.DefaultPrefix
	}
	jobs := messaging.JobStream
	subjects := []string{
		prefix + ".api.hosts.>",
		prefix + ".events.>",
		"$JS.API.INFO",
		"$JS.API.CONSUMER.INFO." + jobs + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + jobs + ".*",
		"$JS.ACK." + jobs + ".>",
	}
	for _, b := range []string{messaging.HostBucket, messaging.JobBucket, messaging.CacheBucket, messaging.VolumeBucket} {
		subjects = append(subjects, "$JS.API.STREAM.INFO.KV_"+b, "$JS.API.DIRECT.GET.KV_"+b+".>", "$KV."+b+".>")
	}
	var out jwt.Exports
	for _, s := range subjects {
		e := &jwt.Export{Name: s, Subject: jwt.Subject(s), Type: jwt.Service}
		if strings.HasPrefix(s, "$JS.API.CONSUMER.MSG.NEXT.") {
			e.ResponseType = jwt.ResponseTypeStream
		}
		out.Add(e)
	}
	return out
}

// mainAccountClaims are PROVISIONER's claims (JetStream enabled, the
// exports) without the host imports.
func mainAccountClaims(pub, signingKey, prefix string) *jwt.AccountClaims {
	ac := jwt.NewAccountClaims(pub)
	ac.Name = embedded.MainAccount
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit,
		Streams: jwt.NoLimit, Consumer: jwt.NoLimit, MaxAckPending: jwt.NoLimit, MemoryMaxStreamBytes: jwt.NoLimit,
		DiskMaxStreamBytes: jwt.NoLimit}
	ac.Exports = mainExports(prefix)
	ac.SigningKeys.Add(signingKey)
	return ac
}

// controlImport is PROVISIONER's import of a host's control subjects from
// its account.
func controlImport(a embedded.HostAccount, accountPub string) *jwt.Import {
	return &jwt.Import{Name: a.Host, Subject: jwt.Subject(a.Control), Account: accountPub, Type: jwt.Service}
}

// setControlImport adds (or, with accountPub "", removes) host's control
// import in PROVISIONER's claims.
func setControlImport(ac *jwt.AccountClaims, a embedded.HostAccount, accountPub string) {
	ac.Imports = slices.DeleteFunc(ac.Imports, func(im *jwt.Import) bool { return string(im.Subject) == a.Control })
	if accountPub != "" {
		ac.Imports.Add(controlImport(a, accountPub))
	}
}

// setContentExports adds to PROVISIONER's claims ac the services of host's
// content bucket its worker imports (embedded.ContentReads), or removes
// them. They are one set per enrolled host: the host is part of the
// stream's name, a single token, and exports may not overlap.
func setContentExports(ac *jwt.AccountClaims, host string, enrolled bool) {
	subjects := embedded.ContentReads(host)
	ac.Exports = slices.DeleteFunc(ac.Exports, func(e *jwt.Export) bool { return slices.Contains(subjects, string(e.Subject)) })
	if !enrolled {
		return
	}
	for _, s := range subjects {
		ac.Exports.Add(&jwt.Export{Name: s, Subject: jwt.Subject(s), Type: jwt.Service})
	}
}

// hostAccountClaims are the claims of a's account pub: no JetStream, the
// services of a imported from PROVISIONER (mainPub), its control subjects
// exported, and workerKey as a signing key scoped to a's worker
// permissions.
func hostAccountClaims(a embedded.HostAccount, pub, mainPub, workerKey string) *jwt.AccountClaims {
	ac := jwt.NewAccountClaims(pub)
	ac.Name = a.Name
	ac.Tags.Add(natsconn.HostTag(a.Host))
	for _, im := range a.Imports {
		ji := &jwt.Import{Name: im.Subject, Subject: jwt.Subject(im.Subject), Account: mainPub, Type: jwt.Service}
		if im.To != "" && im.To != im.Subject {
			ji.LocalSubject = jwt.RenamingSubject(im.To)
		}
		ac.Imports.Add(ji)
	}
	ac.Exports.Add(&jwt.Export{Name: a.Control, Subject: jwt.Subject(a.Control), Type: jwt.Service})
	scope := jwt.NewUserScope()
	scope.Key = workerKey
	scope.Role = "worker"
	scope.Description = "the worker of " + a.Host
	scope.Template.Permissions = jwtPermissions(a.Permissions)
	scope.Template.AllowedConnectionTypes.Add(jwt.ConnectionTypeStandard)
	ac.SigningKeys.AddScopedSigner(scope)
	return ac
}

// jwtPermissions is p in JWT form.
func jwtPermissions(p *server.Permissions) jwt.Permissions {
	var out jwt.Permissions
	out.Pub.Allow.Add(p.Publish.Allow...)
	out.Sub.Allow.Add(p.Subscribe.Allow...)
	if p.Response != nil {
		out.Resp = &jwt.ResponsePermission{MaxMsgs: p.Response.MaxMsgs, Expires: p.Response.Expires}
	}
	return out
}

// revokedHostClaims is ac after revoking its host at now: every user issued
// until now is revoked, and the account keeps no signing key and no import,
// so it can do nothing even with a user signed later.
func revokedHostClaims(ac *jwt.AccountClaims, now time.Time) *jwt.AccountClaims {
	ac.RevokeAt(jwt.All, now)
	ac.SigningKeys = jwt.SigningKeys{}
	ac.Imports = nil
	ac.Exports = nil
	ac.Tags.Add(TagRevoked)
	return ac
}
