package natsauth

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/libvirt-volume-provisioner/provisioner/embedded"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/natsconn"
)

// prefixRE is a subject prefix: one subject token.
var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Operator is an operator directory opened for enrolling and revoking
// hosts.
type Operator struct {
	// Dir is the operator directory.
	Dir string
	// Prefix is the subject prefix the accounts are written for.
	Prefix string
	// MainAccount and SystemAccount are the public keys of PROVISIONER and SYS.
	MainAccount, SystemAccount string

	signing nkeys.KeyPair // the operator signing key: signs account JWTs
	worker  nkeys.KeyPair // the worker signing key: signs worker users
}

// Init makes a new operator directory dir for subject prefix prefix (empty:
// messaging.DefaultPrefix): the operator, its signing key, the SYS and
// PROVISIONER accounts with their signing keys, the worker signing key, the
// api, admin and sys credentials, and ServerConfFile, the part of
// nats-server's configuration that trusts the operator and preloads the two
// accounts. It refuses a directory that already holds an operator.
func Init(dir, prefix string) (*Operator, error) {
	if prefix == "" {
		prefix = messaging.DefaultPrefix
	}
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("subject prefix %q is not a valid subject token", prefix)
	}
	o := &Operator{Dir: dir, Prefix: prefix}
	if _, err := os.Stat(o.path(OperatorJWTFile)); err == nil {
		return nil, fmt.Errorf("%s already holds an operator (%s); enroll hosts with it, or choose another directory", dir, OperatorJWTFile)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("operator directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("operator directory: %w", err)
	}
	keys := map[string]func() (nkeys.KeyPair, error){
		OperatorKeyFile: nkeys.CreateOperator, OperatorSigningKeyFile: nkeys.CreateOperator,
		MainSigningKeyFile: nkeys.CreateAccount, SystemSigningKeyFile: nkeys.CreateAccount, WorkerSigningKeyFile: nkeys.CreateAccount,
	}
	kps := map[string]nkeys.KeyPair{}
	for name, create := range keys {
		kp, err := create()
		if err != nil {
			return nil, fmt.Errorf("generate %s: %w", name, err)
		}
		kps[name] = kp
	}
	o.signing, o.worker = kps[OperatorSigningKeyFile], kps[WorkerSigningKeyFile]
	sysPub, mainPub, err := newAccountKeys()
	if err != nil {
		return nil, err
	}
	o.SystemAccount, o.MainAccount = sysPub, mainPub

	opJWT, err := operatorJWT(kps[OperatorKeyFile], publicKey(o.signing), sysPub)
	if err != nil {
		return nil, err
	}
	sys := jwt.NewAccountClaims(sysPub)
	sys.Name = SystemAccount
	sys.SigningKeys.Add(publicKey(kps[SystemSigningKeyFile]))
	sysJWT, err := sys.Encode(o.signing)
	if err != nil {
		return nil, fmt.Errorf("sign the system account: %w", err)
	}
	mainJWT, err := mainAccountClaims(mainPub, publicKey(kps[MainSigningKeyFile]), prefix).Encode(o.signing)
	if err != nil {
		return nil, fmt.Errorf("sign the %s account: %w", embedded.MainAccount, err)
	}
	for name, kp := range kps {
		if err := o.writeSeed(name, kp); err != nil {
			return nil, err
		}
	}
	for name, data := range map[string]string{OperatorJWTFile: opJWT, SystemJWTFile: sysJWT, MainJWTFile: mainJWT, PrefixFile: prefix} {
		if err := writeFile(o.path(name), []byte(data+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	if err := o.initUsers(kps, sysJWT, mainJWT); err != nil {
		return nil, err
	}
	if err := writeFile(o.path(ServerConfFile), []byte(serverConf(opJWT, sysPub, map[string]string{sysPub: sysJWT, mainPub: mainJWT})), 0o644); err != nil {
		return nil, err
	}
	return o, nil
}

// newAccountKeys makes the identity keys of SYS and PROVISIONER and
// returns their public keys; the seeds are not kept.
func newAccountKeys() (sysPub, mainPub string, err error) {
	var pubs [2]string
	for i := range pubs {
		kp, err := nkeys.CreateAccount()
		if err != nil {
			return "", "", fmt.Errorf("generate an account key: %w", err)
		}
		pubs[i] = publicKey(kp)
		kp.Wipe()
	}
	return pubs[0], pubs[1], nil
}

// operatorJWT is the operator's JWT, signed by its identity key: account
// JWTs must be signed by signingPub (strict signing key usage).
func operatorJWT(kp nkeys.KeyPair, signingPub, sysPub string) (string, error) {
	oc := jwt.NewOperatorClaims(publicKey(kp))
	oc.Name = OperatorName
	oc.SystemAccount = sysPub
	oc.StrictSigningKeyUsage = true
	oc.SigningKeys.Add(signingPub)
	s, err := oc.Encode(kp)
	if err != nil {
		return "", fmt.Errorf("sign the operator: %w", err)
	}
	return s, nil
}

// initUsers writes the api and admin credentials (PROVISIONER) and sys (SYS).
func (o *Operator) initUsers(kps map[string]nkeys.KeyPair, sysJWT, mainJWT string) error {
	api := APIPermissions(o.Prefix)
	for _, u := range []struct {
		file, name, account string
		signer              nkeys.KeyPair
		perms               *jwt.Permissions
	}{
		{APICredsFile, "api", o.MainAccount, kps[MainSigningKeyFile], &api},
		{AdminCredsFile, "admin", o.MainAccount, kps[MainSigningKeyFile], nil},
		{SystemCredsFile, "sys", o.SystemAccount, kps[SystemSigningKeyFile], nil},
	} {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return fmt.Errorf("generate the %s user: %w", u.name, err)
		}
		uc := jwt.NewUserClaims(publicKey(kp))
		uc.Name = u.name
		uc.IssuerAccount = u.account
		if u.perms != nil {
			uc.Permissions = *u.perms
		}
		userJWT, err := uc.Encode(u.signer)
		if err != nil {
			return fmt.Errorf("sign the %s user: %w", u.name, err)
		}
		if err := writeCreds(o.path(u.file), userJWT, kp); err != nil {
			return err
		}
	}
	return nil
}

// serverConf is ServerConfFile: the operator, the system account and the
// preloaded account JWTs.
func serverConf(opJWT, sysPub string, preload map[string]string) string {
	var b strings.Builder
	b.WriteString("# Generated by provisioner-nats init: trusts the provisioner operator and\n")
	b.WriteString("# preloads the SYS and PROVISIONER accounts into the resolver (a newer JWT\n")
	b.WriteString("# pushed at run time wins). Included by deploy/nats/*.conf; copy it to every\n")
	b.WriteString("# node. Host accounts are not here: provisioner-nats enroll pushes them.\n")
	fmt.Fprintf(&b, "operator: %q\n", opJWT)
	fmt.Fprintf(&b, "system_account: %q\n", sysPub)
	b.WriteString("resolver_preload: {\n")
	keys := make([]string, 0, len(preload))
	for k := range preload {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s: %q\n", k, preload[k])
	}
	b.WriteString("}\n")
	return b.String()
}

// Open opens the operator directory dir that Init made.
func Open(dir string) (*Operator, error) {
	o := &Operator{Dir: dir}
	if _, err := os.Stat(o.path(OperatorJWTFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotInitialized)
	}
	prefix, err := os.ReadFile(o.path(PrefixFile))
	if err != nil {
		return nil, fmt.Errorf("operator directory: %w", err)
	}
	o.Prefix = strings.TrimSpace(string(prefix))
	if o.signing, err = o.readSeed(OperatorSigningKeyFile, nkeys.PrefixByteOperator); err != nil {
		return nil, err
	}
	if o.worker, err = o.readSeed(WorkerSigningKeyFile, nkeys.PrefixByteAccount); err != nil {
		return nil, err
	}
	for _, a := range []struct {
		file string
		dst  *string
	}{{MainJWTFile, &o.MainAccount}, {SystemJWTFile, &o.SystemAccount}} {
		ac, err := readAccount(o.path(a.file))
		if err != nil {
			return nil, fmt.Errorf("operator directory: %w", err)
		}
		*a.dst = ac.Subject
	}
	return o, nil
}

// Lock takes the directory's lock (flock on the directory itself) until
// the returned function is called, so two commands never lose each
// other's change of PROVISIONER's imports.
func (o *Operator) Lock() (func(), error) {
	f, err := os.Open(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("lock the operator directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock the operator directory: %w", err)
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// Change is an enrollment or a revocation of one or more hosts: the
// account JWTs to push in order (the hosts' accounts, then PROVISIONER's),
// and for an enrollment each worker's credentials. Nothing is written
// until Commit.
type Change struct {
	Hosts []string
	JWTs  []string
	// Creds are the credentials files by host (enrollments only).
	Creds    map[string][]byte
	hostJWTs map[string]string
	mainJWT  string
}

// checkHosts refuses an empty list, a name that is not a host token and a
// name given twice.
func checkHosts(hosts []string) error {
	if len(hosts) == 0 {
		return errors.New("no host named")
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if !messaging.ValidHost(h) {
			return fmt.Errorf("host name %q is not a valid host token (lower-case letters, digits and dashes, at most 63): %w", h, ErrInvalidHost)
		}
		if seen[h] {
			return fmt.Errorf("host %s is named twice", h)
		}
		seen[h] = true
	}
	return nil
}

// Enroll prepares the enrollment of hosts: each one's account (the one it
// had, if it was enrolled before), PROVISIONER importing their control
// subjects, and a new worker user each. Enrolling a host again rotates its
// credentials: every user its account had before is revoked.
func (o *Operator) Enroll(hosts ...string) (*Change, error) {
	if err := checkHosts(hosts); err != nil {
		return nil, err
	}
	main, err := readAccount(o.path(MainJWTFile))
	if err != nil {
		return nil, fmt.Errorf("operator directory: %w", err)
	}
	c := &Change{Hosts: hosts, Creds: map[string][]byte{}, hostJWTs: map[string]string{}}
	accounts := map[string]*jwt.AccountClaims{}
	revokeAt := time.Now()
	rotated := false
	for _, host := range hosts {
		a := embedded.NewHostAccount(o.Prefix, host)
		pub, prev, err := o.hostAccountKey(host)
		if err != nil {
			return nil, err
		}
		ac := hostAccountClaims(a, pub, o.MainAccount, publicKey(o.worker))
		if prev != nil {
			// Keep the revocations, and revoke every user issued so far.
			ac.Revocations = prev.Revocations
			ac.RevokeAt(jwt.All, revokeAt)
			rotated = true
		}
		accounts[host] = ac
		setControlImport(main, a, pub)
		setContentExports(main, host, true)
	}
	if rotated {
		// New users must be issued after that second (revocations cover
		// every JWT issued at or before their time).
		time.Sleep(time.Until(time.Unix(revokeAt.Unix()+1, 0)))
	}
	for _, host := range hosts {
		ac := accounts[host]
		hostJWT, err := ac.Encode(o.signing)
		if err != nil {
			return nil, fmt.Errorf("sign %s's account: %w", host, err)
		}
		if c.Creds[host], err = o.workerCreds(embedded.NewHostAccount(o.Prefix, host), ac.Subject); err != nil {
			return nil, err
		}
		c.hostJWTs[host] = hostJWT
		c.JWTs = append(c.JWTs, hostJWT)
	}
	return c, o.finish(c, main)
}

// finish signs PROVISIONER's claims main into c, pushed last.
func (o *Operator) finish(c *Change, main *jwt.AccountClaims) error {
	s, err := main.Encode(o.signing)
	if err != nil {
		return fmt.Errorf("sign the %s account: %w", embedded.MainAccount, err)
	}
	c.mainJWT = s
	c.JWTs = append(c.JWTs, s)
	return nil
}

// hostAccountKey is the public key of host's account: the one in its
// stored JWT (returned as prev), or a new one.
func (o *Operator) hostAccountKey(host string) (string, *jwt.AccountClaims, error) {
	prev, err := readAccount(o.hostJWTPath(host))
	if err == nil {
		return prev.Subject, prev, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", nil, err
	}
	kp, err := nkeys.CreateAccount()
	if err != nil {
		return "", nil, fmt.Errorf("generate %s's account key: %w", host, err)
	}
	defer kp.Wipe()
	return publicKey(kp), nil, nil
}

// workerCreds issues a new user for a's worker in account accountPub,
// signed by the scoped worker signing key (so its permissions are the
// scope's), and returns its credentials file.
func (o *Operator) workerCreds(a embedded.HostAccount, accountPub string) ([]byte, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("generate %s's worker key: %w", a.Host, err)
	}
	defer kp.Wipe()
	uc := jwt.NewUserClaims(publicKey(kp))
	uc.Name = messaging.ConsumerName(a.Host)
	uc.IssuerAccount = accountPub
	uc.Tags.Add(natsconn.HostTag(a.Host))
	// A scoped signer's users carry no permissions or limits of their own.
	uc.UserPermissionLimits = jwt.UserPermissionLimits{}
	userJWT, err := uc.Encode(o.worker)
	if err != nil {
		return nil, fmt.Errorf("sign %s's worker: %w", a.Host, err)
	}
	return formatCreds(userJWT, kp)
}

// Revoke prepares the revocation of hosts: each one's account revokes
// every user, keeps no signing key and imports nothing, and PROVISIONER no
// longer imports their control subjects.
func (o *Operator) Revoke(hosts ...string) (*Change, error) {
	if err := checkHosts(hosts); err != nil {
		return nil, err
	}
	main, err := readAccount(o.path(MainJWTFile))
	if err != nil {
		return nil, fmt.Errorf("operator directory: %w", err)
	}
	c := &Change{Hosts: hosts, hostJWTs: map[string]string{}}
	now := time.Now()
	for _, host := range hosts {
		prev, err := readAccount(o.hostJWTPath(host))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w (no %s)", host, ErrNotEnrolled, o.hostJWTPath(host))
		}
		if err != nil {
			return nil, err
		}
		hostJWT, err := revokedHostClaims(prev, now).Encode(o.signing)
		if err != nil {
			return nil, fmt.Errorf("sign %s's account: %w", host, err)
		}
		setControlImport(main, embedded.NewHostAccount(o.Prefix, host), "")
		setContentExports(main, host, false)
		c.hostJWTs[host] = hostJWT
		c.JWTs = append(c.JWTs, hostJWT)
	}
	return c, o.finish(c, main)
}

// Commit records c in the directory (after its JWTs were pushed).
func (o *Operator) Commit(c *Change) error {
	for _, host := range c.Hosts {
		if err := writeFile(o.hostJWTPath(host), []byte(c.hostJWTs[host]+"\n"), 0o644); err != nil {
			return err
		}
	}
	return writeFile(o.path(MainJWTFile), []byte(c.mainJWT+"\n"), 0o644)
}

// AccountJWTs are every account JWT of the directory, host accounts first
// and PROVISIONER last (the order a resolver that lost them needs).
func (o *Operator) AccountJWTs() ([]string, error) {
	var out []string
	entries, err := os.ReadDir(o.path(hostsDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("operator directory: %w", err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".jwt") {
			out = append(out, o.path(hostsDir+"/"+e.Name()))
		}
	}
	out = append(out, o.path(SystemJWTFile), o.path(MainJWTFile))
	for i, path := range out {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("operator directory: %w", err)
		}
		out[i] = strings.TrimSpace(string(data))
	}
	return out, nil
}

// Hosts lists the enrolled hosts and whether each is revoked.
func (o *Operator) Hosts() (map[string]bool, error) {
	entries, err := os.ReadDir(o.path(hostsDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("operator directory: %w", err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		host, ok := strings.CutSuffix(e.Name(), ".jwt")
		if !ok {
			continue
		}
		ac, err := readAccount(o.hostJWTPath(host))
		if err != nil {
			return nil, err
		}
		out[host] = ac.Tags.Contains(TagRevoked)
	}
	return out, nil
}

// publicKey is kp's public key (nkeys key pairs made here always have one).
func publicKey(kp nkeys.KeyPair) string {
	pub, _ := kp.PublicKey()
	return pub
}
