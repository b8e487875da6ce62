// Package natsauth is the provisioner's NATS decentralized (JWT)
// authentication for a fleet: an operator, the PROVISIONER account (streams,
// buckets, the API, operators), the system account, and one account per
// hypervisor, kept as signed JWTs in an operator directory and pushed to
// nats-server's account resolver at run time, so enrolling or revoking a
// host needs no server restart and no configuration edit.
//
// The keys and what each one signs:
//
//   - the operator key (operator.nk) signs only the operator JWT; after Init
//     it can be moved offline.
//   - the operator signing key (operator-signing.nk) signs every account JWT
//     (the operator JWT requires signing keys: strict signing key usage).
//   - the PROVISIONER and SYS account signing keys issue the api, admin and
//     sys users.
//   - the worker signing key (worker-signing.nk) is a scoped signing key of
//     every host account: the scope is that host's worker permissions, so a
//     user it signs gets exactly those, and the user JWT itself carries none.
//
// Account identity keys are generated, used as the accounts' names and
// discarded: nothing needs them afterwards.
//
// A host account is what embedded.HostAccount describes: no JetStream, the
// worker's subjects imported from PROVISIONER as services (JetStream under
// embedded.HostAPIPrefix), its control subjects exported back, and
// PROVISIONER importing them. Whatever reply subject a worker names, the
// answers land in its own account (deploy/nats/README.md, SECURITY.md).
//
// Revoking a host revokes every user its account ever had (the account's
// "*" revocation), removes the worker signing key and the imports from the
// account, and drops the host's control import from PROVISIONER; the
// resolver applies it at once, disconnecting the worker.
package natsauth
