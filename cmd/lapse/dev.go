package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/authn"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/config"
)

// Files of the dev data directory.
const (
	devConfigFile     = "lapse.yaml"
	devSealingKeyFile = "sealing.key"
	devCredentialsDir = "credentials"
	defaultDevDataDir = ".lapse"
	// devActor is recorded as the creator of the dev users' keys.
	devActor = "lapse-dev"
)

// devConfig is the configuration lapse dev writes on first start. It is
// examples/dev.yaml byte for byte (a test keeps them equal); relative paths
// in it are relative to the data directory that holds it.
const devConfig = `# Lapse development configuration, written by 'lapse dev' on first start.
# Edit it and restart 'lapse dev' to try a change; delete the whole data
# directory to start over. Every field is described in docs/configuration.md.
# Relative paths are relative to the directory of this file.

listen: 127.0.0.1:8700
data_dir: .
log:
  level: info
  format: text

# The embedded default: one SQLite file, no setup.
store:
  driver: sqlite
  dsn: lapse.db

# Seals credentials until their grantee claims them. 'lapse dev' generated
# it; in production, keep it out of the configuration like this.
sealing_key:
  file: sealing.key

targets:
  # A built-in target that issues short-lived Ed25519-signed JWTs for one
  # API audience. Its signing key is generated on first start and kept.
  demo-api:
    kind: token
    config:
      issuer: http://127.0.0.1:8700
      audience: demo-api
      generate_key: true

entitlements:
  - name: demo-api/read
    description: Read the demo API. One approver must agree.
    target: demo-api
    lanes: [human, agent]
    requesters: ["group:developers"]
    default_duration: 15m
    max_duration: 1h
    require_reason: true
    approval:
      required: 1
      approvers: ["group:approvers"]
    spec:
      scopes: ["demo:read"]

  - name: demo-api/deploy
    description: Deploy to the demo API. Two different people must agree.
    target: demo-api
    lanes: [human]
    requesters: ["group:developers"]
    default_duration: 30m
    max_duration: 2h
    require_reason: true
    approval:
      required: 2
      approvers: ["group:approvers", "group:admins"]
    spec:
      scopes: ["demo:deploy"]

  - name: demo-api/status
    description: Read the demo API's status. Granted at once, for people, services and agents.
    target: demo-api
    lanes: [human, service, agent]
    default_duration: 5m
    max_duration: 15m
    approval:
      auto: true
    spec:
      scopes: ["demo:status"]

  # High-risk for agents: a developer gets it at once, an AI agent acting
  # for one waits for a human approver (never its own sponsor).
  - name: demo-api/admin
    description: Administer the demo API. Granted at once to developers; an agent's request waits for a human.
    target: demo-api
    lanes: [human, agent]
    requesters: ["group:developers"]
    default_duration: 10m
    max_duration: 30m
    approval:
      auto: true
      approvers: ["group:approvers"]
    agents:
      approval: human
    spec:
      scopes: ["demo:admin"]
`

// devUser is one built-in user of lapse dev: an API key kept in the store,
// its secret in DATA_DIR/credentials/NAME.key.
type devUser struct {
	Name   string
	Role   string
	Groups []string
	Scopes []string
}

var devUsers = []devUser{
	{Name: "alice", Role: "requester", Groups: []string{"developers"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest}},
	{Name: "bob", Role: "approver", Groups: []string{"approvers"}, Scopes: []string{lapse.ScopeRead, lapse.ScopeApprove, lapse.ScopeRevoke}},
	{Name: "admin", Role: "administrator", Groups: []string{"admins"}, Scopes: []string{lapse.ScopeAdmin}},
}

func (m *Main) devCommand() *cobra.Command {
	var dataDir, listen string
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run Lapse with zero setup, for trying it out",
		Long: `Run Lapse as an embedded single-node server with zero setup.

On first start it creates the data directory (mode 0700) with a SQLite
database, a sealing key, a token target's signing key, a configuration
(lapse.yaml, edit it and restart to try changes) with an example catalog,
and three users with their API keys in credentials/: alice (requester),
bob (approver) and admin. Later starts reuse all of it: grants, keys and
users survive a restart. It prints the commands to try next.

Delete the data directory to start over. Not for production: use
'lapse server' with a configuration of your own.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return m.runDev(c.Context(), dataDir, listen)
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", defaultDevDataDir, "data directory (created on first start)")
	c.Flags().StringVar(&listen, "listen", "", "listen address, overriding the configuration's (default 127.0.0.1:8700; 127.0.0.1:0 picks a free port)")
	return c
}

// runDev prepares the data directory, then runs a server from the
// configuration in it.
func (m *Main) runDev(ctx context.Context, dataDir, listen string) error {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return serverErr(fmt.Errorf("data directory %s: %w", dataDir, err))
	}
	created, err := initDevDir(dir)
	if err != nil {
		return serverErr(err)
	}
	cfg, err := config.Load(filepath.Join(dir, devConfigFile))
	if err != nil {
		return err
	}
	logger, err := m.newLogger(cfg)
	if err != nil {
		return err
	}
	if created {
		logger.Info("created the development data directory", "dir", dir)
	}
	var fresh []string
	s := &Server{
		Config: cfg,
		Logger: logger,
		Clock:  m.Clock,
		Listen: listen,
		Prepare: func(ctx context.Context, s *Server) error {
			var err error
			fresh, err = ensureDevUsers(ctx, s.Store, s.Clock, filepath.Join(dir, devCredentialsDir))
			return err
		},
	}
	return m.serve(ctx, s, func(s *Server) {
		printDevBanner(m.Stdout, dir, s.Addr(), fresh)
	})
}

// initDevDir creates the data directory, its sealing key and its
// configuration if they do not exist, and never overwrites them. It
// reports whether the directory was created.
func initDevDir(dir string) (created bool, err error) {
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("create data directory: %w", err)
		}
		created = true
	case err != nil:
		return false, fmt.Errorf("data directory: %w", err)
	case !fi.IsDir():
		return false, fmt.Errorf("data directory %s is not a directory", dir)
	case fi.Mode().Perm()&0o077 != 0:
		// It holds keys: other users must not read it.
		if err := os.Chmod(dir, 0o700); err != nil {
			return false, fmt.Errorf("restrict data directory to its owner: %w", err)
		}
	}
	key := make([]byte, config.SealingKeySize)
	if _, err := rand.Read(key); err != nil {
		return false, fmt.Errorf("generate sealing key: %w", err)
	}
	if err := writeNew(filepath.Join(dir, devSealingKeyFile), []byte(base64.StdEncoding.EncodeToString(key)+"\n")); err != nil {
		return false, fmt.Errorf("write sealing key: %w", err)
	}
	if err := writeNew(filepath.Join(dir, devConfigFile), []byte(devConfig)); err != nil {
		return false, fmt.Errorf("write configuration: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, devCredentialsDir), 0o700); err != nil {
		return false, fmt.Errorf("create credentials directory: %w", err)
	}
	return created, nil
}

// writeNew creates path with mode 0600 and writes data, unless path
// exists. It writes to a temporary file first, so a crash never leaves a
// half-written key behind.
func writeNew(path string, data []byte) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return writeFileAtomic(path, data)
}

// writeFileAtomic replaces path with data (mode 0600) through a temporary
// file in the same directory.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after a successful rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// ensureDevUsers makes sure every dev user has a working API key whose
// secret is in credDir. A key that exists and still authenticates is kept;
// a missing, revoked or unknown one (the database was deleted) is replaced.
// It returns the users whose keys were created now.
func ensureDevUsers(ctx context.Context, store lapse.Store, clock lapse.Clock, credDir string) ([]string, error) {
	if err := os.MkdirAll(credDir, 0o700); err != nil {
		return nil, fmt.Errorf("create credentials directory: %w", err)
	}
	auth := &authn.APIKeys{Keys: store, Clock: clock}
	actor := lapse.Principal{ID: devActor, Kind: lapse.KindService, Name: "lapse dev"}
	var fresh []string
	for _, u := range devUsers {
		path := filepath.Join(credDir, u.Name+".key")
		if b, err := os.ReadFile(path); err == nil {
			p, err := auth.Authenticate(ctx, strings.TrimSpace(string(b)))
			switch code := lapse.ErrorCode(err); {
			case err == nil && p.ID == u.Name:
				continue
			case code == lapse.EUNAVAILABLE:
				return nil, fmt.Errorf("check the key of %s: %w", u.Name, err)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read the key of %s: %w", u.Name, err)
		}
		in := lapse.APIKeyInput{
			PrincipalID:   u.Name,
			PrincipalKind: lapse.KindHuman,
			Groups:        u.Groups,
			Scopes:        u.Scopes,
			Name:          "lapse dev user " + u.Name,
		}
		k, err := createAPIKey(lapse.WithChannel(ctx, lapse.ChannelSystem), store, clock, in, actor)
		if err != nil {
			return nil, fmt.Errorf("create the key of %s: %w", u.Name, err)
		}
		if err := writeFileAtomic(path, []byte(k.Secret+"\n")); err != nil {
			return nil, fmt.Errorf("write the key of %s: %w", u.Name, err)
		}
		fresh = append(fresh, u.Name)
	}
	return fresh, nil
}

// createAPIKey validates in, generates a key and stores it together with
// its apikey.created event in one transaction, acting as actor. The secret
// is in the result only.
func createAPIKey(ctx context.Context, store lapse.Store, clock lapse.Clock, in lapse.APIKeyInput, actor lapse.Principal) (*lapse.NewAPIKey, error) {
	k, secret, err := broker.NewAPIKey(in, clock.Now(), actor.ID)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(map[string]any{"prefix": k.Prefix, "principal": k.Principal.ID, "scopes": k.Scopes, "expires_at": k.ExpiresAt})
	if err != nil {
		return nil, err
	}
	err = store.Update(ctx, func(tx lapse.Tx) error {
		if err := tx.InsertAPIKey(ctx, k); err != nil {
			return err
		}
		return tx.AppendEvent(ctx, &lapse.Event{
			Time: clock.Now(), Type: lapse.EventAPIKeyCreated,
			ActorID: actor.ID, ActorKind: actor.Kind, Channel: lapse.ChannelFrom(ctx),
			Outcome: "created", Data: data,
		})
	})
	if err != nil {
		return nil, err
	}
	return &lapse.NewAPIKey{APIKey: *k, Secret: secret}, nil
}

// printDevBanner prints where Lapse runs and the commands to try next,
// ready to copy and paste.
func printDevBanner(w io.Writer, dir string, addr net.Addr, fresh []string) {
	url := "http://" + clientHostPort(addr)
	show := displayPath(dir)
	cred := func(user string) string { return filepath.Join(show, devCredentialsDir, user+".key") }
	q := shellQuote

	fmt.Fprintf(w, "\nLapse is running in development mode at %s\n\n", url)
	fmt.Fprintf(w, "  data directory  %s (delete it to start over)\n", show)
	fmt.Fprintf(w, "  configuration   %s (edit it and restart to try a change)\n", filepath.Join(show, devConfigFile))
	fmt.Fprintf(w, "  users           alice (requester), bob (approver), admin; API keys in %s\n", filepath.Join(show, devCredentialsDir))
	if len(fresh) > 0 {
		fmt.Fprintf(w, "                  new keys for: %s\n", strings.Join(fresh, ", "))
	}
	if _, err := exec.LookPath("lapse"); err != nil {
		fmt.Fprintln(w, "\n  'lapse' is not on your PATH: run 'go install ./cmd/lapse', or use 'go run ./cmd/lapse' for 'lapse' below.")
	}
	fmt.Fprintf(w, `
Try it. In a second terminal, alice asks for read access and waits:

  export LAPSE_ADDR=%[1]s
  LAPSE_TOKEN_FILE=%[2]s lapse request demo-api/read --for 15m --reason "debug ticket 42" --wait

In a third terminal, bob sees the request and approves it:

  export LAPSE_ADDR=%[1]s
  LAPSE_TOKEN_FILE=%[3]s lapse requests --approvable
  LAPSE_TOKEN_FILE=%[3]s lapse approve REQUEST_ID

alice's terminal then prints her token. Check it against the target's keys,
and ask the server whether it is active (RFC 7662 introspection):

  curl -s %[1]s/v1/targets/demo-api/jwks.json
  curl -s -H "Authorization: Bearer $(cat %[4]s)" -d token=TOKEN %[1]s/v1/targets/demo-api/introspect

Give it back; introspection then says inactive, and the grant shows revoked
with a verified checkpoint:

  LAPSE_TOKEN_FILE=%[2]s lapse release GRANT_ID
  LAPSE_TOKEN_FILE=%[2]s lapse grant GRANT_ID

demo-api/status is granted at once:

  LAPSE_TOKEN_FILE=%[2]s lapse request demo-api/status

Once a grant is revoked, fetch its signed receipt and check it offline with
the audit log's public key (docs/audit.md):

  LAPSE_TOKEN_FILE=%[2]s lapse receipt GRANT_ID --out receipt.json
  lapse receipt verify receipt.json --key %[5]s

`, url, q(cred("alice")), q(cred("bob")), q(cred("admin")), q(filepath.Join(show, "audit.pub")))
}

// clientHostPort turns a listen address into one a client can dial: an
// unspecified host (0.0.0.0, ::) becomes the loopback address.
func clientHostPort(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

// displayPath shows dir relative to the working directory when it is under
// it, so printed commands are short and work from here.
func displayPath(dir string) string {
	wd, err := os.Getwd()
	if err != nil {
		return dir
	}
	rel, err := filepath.Rel(wd, dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return dir
	}
	return rel
}

// shellQuote quotes s for a POSIX shell if it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:@%=", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
