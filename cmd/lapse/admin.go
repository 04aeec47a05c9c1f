package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/broker"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/sqlstore"
)

// defaultAdminKeyTTL is the lifetime of a key made by lapse admin unless
// --ttl says otherwise: long enough to bootstrap, short enough that a
// forgotten bootstrap key does not live forever.
const defaultAdminKeyTTL = 90 * 24 * time.Hour

func (m *Main) adminCommand() *cobra.Command {
	admin := &cobra.Command{
		Use:   "admin",
		Short: "Administer a Lapse store directly (bootstrap)",
		Long: `Administer the store named by a configuration file directly, without a
running server. Use it to create the first administrator's API key; after
that, prefer the API ('lapse apikey') so every change goes through the
server's checks and channel.`,
	}
	apikey := &cobra.Command{
		Use:   "apikey",
		Short: "Create, list and revoke API keys in the store",
	}
	apikey.AddCommand(m.adminAPIKeyCreate(), m.adminAPIKeyList(), m.adminAPIKeyRevoke())
	admin.AddCommand(apikey, m.adminMigrate(), m.adminGrantServerRole())
	return admin
}

// adminFlags are the flags every admin command takes.
type adminFlags struct {
	config string
}

func (f *adminFlags) register(c *cobra.Command) {
	c.Flags().StringVarP(&f.config, "config", "c", "", "configuration file that names the store (required)")
}

// openStore loads the configuration and opens its store, migrating it
// unless the configuration says skip_migrations.
func (f *adminFlags) openStore(ctx context.Context, c *cobra.Command) (*sqlstore.Store, error) {
	return f.open(ctx, c, false)
}

// open loads the configuration and opens its store; migrate forces the
// migrations to run whatever the configuration says.
func (f *adminFlags) open(ctx context.Context, c *cobra.Command, migrate bool) (*sqlstore.Store, error) {
	if f.config == "" {
		return nil, &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "config", "--config FILE is required"), command: c.CommandPath()}
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		return nil, err
	}
	dsn, err := cfg.ResolveStoreDSN()
	if err != nil {
		return nil, err
	}
	if cfg.Store.Driver == sqlstore.DriverSQLite {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, serverErr(fmt.Errorf("create data directory %s: %w", cfg.DataDir, err))
		}
	}
	s, err := sqlstore.OpenWith(ctx, cfg.Store.Driver, dsn, sqlstore.Options{SkipMigrations: cfg.Store.SkipMigrations && !migrate})
	if err != nil {
		return nil, serverErr(fmt.Errorf("open %s store (%s): %w", cfg.Store.Driver, cfg.Store.DSN, err))
	}
	return s, nil
}

// localActor is who lapse admin acts as in the audit log: the operating
// system user who ran it.
func localActor() lapse.Principal {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	id, err := lapse.NormalizeID("local:" + name)
	if err != nil {
		id = "local:unknown"
	}
	return lapse.Principal{ID: id, Kind: lapse.KindHuman, Name: name}
}

func (m *Main) adminAPIKeyCreate() *cobra.Command {
	var (
		f      adminFlags
		in     lapse.APIKeyInput
		kind   string
		groups []string
		scopes []string
		ttl    time.Duration
	)
	c := &cobra.Command{
		Use:   "create --config FILE --principal ID --scope SCOPE...",
		Short: "Create an API key and print its secret once",
		Long: `Create an API key in the store and print its secret on standard output,
once: it is not kept, only its hash is. Scopes: ` + strings.Join(lapse.AllScopes, ", ") + `.
The key expires after --ttl (default 90 days; 0 means never).`,
		Example: `  lapse admin apikey create --config lapse.yaml --principal ops-admin --scope admin > admin.key
  lapse admin apikey create -c lapse.yaml --principal billing-api --kind service --scope introspect --ttl 720h`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if in.PrincipalID == "" {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "principal", "--principal is required"), command: c.CommandPath()}
			}
			if len(scopes) == 0 {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "scope", "at least one --scope is required (%s)", strings.Join(lapse.AllScopes, ", ")), command: c.CommandPath()}
			}
			if ttl < 0 || ttl > lapse.MaxAnyDuration {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "ttl", "--ttl must be between 0 (never expires) and %s", lapse.MaxAnyDuration), command: c.CommandPath()}
			}
			in.PrincipalKind = lapse.PrincipalKind(kind)
			in.Groups = groups
			in.Scopes = scopes
			in.TTL = lapse.Duration(ttl)
			ctx := c.Context()
			store, err := f.openStore(ctx, c)
			if err != nil {
				return err
			}
			defer store.Close()
			clock := m.clock()
			k, err := createAPIKey(lapse.WithChannel(ctx, lapse.ChannelCLI), store, clock, in, localActor())
			if err != nil {
				return err
			}
			expiry := "never expires"
			if !k.ExpiresAt.IsZero() {
				expiry = "expires " + k.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(m.Stderr, "Created API key %s for %s (%s; scopes %s; %s).\nThe secret follows; it is shown only this once.\n",
				k.Prefix, k.Principal.ID, k.Principal.Kind, strings.Join(k.Scopes, ","), expiry)
			_, err = fmt.Fprintln(m.Stdout, k.Secret)
			return err
		},
	}
	f.register(c)
	c.Flags().StringVar(&in.PrincipalID, "principal", "", "principal ID the key authenticates as (required)")
	c.Flags().StringVar(&kind, "kind", string(lapse.KindHuman), "principal kind: human, service or agent")
	c.Flags().StringSliceVar(&groups, "group", nil, "group of the principal (repeat or comma-separate)")
	c.Flags().StringSliceVar(&scopes, "scope", nil, "scope of the key (repeat or comma-separate; required)")
	c.Flags().StringVar(&in.Name, "name", "", "a label for the key")
	c.Flags().DurationVar(&ttl, "ttl", defaultAdminKeyTTL, "lifetime of the key; 0 means it never expires")
	return c
}

func (m *Main) adminAPIKeyList() *cobra.Command {
	var (
		f      adminFlags
		output string
	)
	c := &cobra.Command{
		Use:   "list --config FILE",
		Short: "List API keys (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "output", "-o must be table or json"), command: c.CommandPath()}
			}
			store, err := f.openStore(c.Context(), c)
			if err != nil {
				return err
			}
			defer store.Close()
			keys, err := store.ListAPIKeys(c.Context())
			if err != nil {
				return serverErr(fmt.Errorf("list api keys: %w", err))
			}
			if output == "json" {
				if keys == nil {
					keys = []*lapse.APIKey{}
				}
				enc := json.NewEncoder(m.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"apikeys": keys})
			}
			now := m.clock().Now()
			tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PREFIX\tPRINCIPAL\tKIND\tSCOPES\tNAME\tCREATED\tSTATUS")
			for _, k := range keys {
				status := "active"
				switch {
				case !k.RevokedAt.IsZero():
					status = "revoked " + k.RevokedAt.Format(time.RFC3339)
				case !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt):
					status = "expired " + k.ExpiresAt.Format(time.RFC3339)
				case !k.ExpiresAt.IsZero():
					status = "expires " + k.ExpiresAt.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Prefix, clean(k.Principal.ID), k.Principal.Kind,
					strings.Join(k.Scopes, ","), clean(k.Name), k.CreatedAt.Format(time.RFC3339), status)
			}
			return tw.Flush()
		},
	}
	f.register(c)
	c.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return c
}

func (m *Main) adminAPIKeyRevoke() *cobra.Command {
	var f adminFlags
	c := &cobra.Command{
		Use:   "revoke --config FILE PREFIX",
		Short: "Revoke an API key by its prefix",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "prefix", "give exactly one key prefix"), command: c.CommandPath()}
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			store, err := f.openStore(ctx, c)
			if err != nil {
				return err
			}
			defer store.Close()
			k, err := revokeAPIKey(lapse.WithChannel(ctx, lapse.ChannelCLI), store, m.clock(), args[0], localActor())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(m.Stdout, "API key %s of %s revoked at %s\n", k.Prefix, clean(k.Principal.ID), k.RevokedAt.Format(time.RFC3339))
			return err
		},
	}
	f.register(c)
	return c
}

// revokeAPIKey revokes the key with prefix and records apikey.revoked in
// the same transaction (broker.RevokeAPIKeyIn). Revoking a revoked key
// changes nothing. Returns ENOTFOUND if no key has that prefix.
func revokeAPIKey(ctx context.Context, store lapse.Store, clock lapse.Clock, prefix string, actor lapse.Principal) (*lapse.APIKey, error) {
	var out *lapse.APIKey
	err := store.Update(ctx, func(tx lapse.Tx) error {
		var err error
		out, err = broker.RevokeAPIKeyIn(ctx, tx, prefix, clock.Now(), actor)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// clock returns the injected clock or the system clock.
func (m *Main) clock() lapse.Clock {
	if m.Clock != nil {
		return m.Clock
	}
	return lapse.SystemClock{}
}

func (m *Main) adminMigrate() *cobra.Command {
	var f adminFlags
	c := &cobra.Command{
		Use:   "migrate --config FILE",
		Short: "Apply the store's pending schema migrations",
		Long: `Apply the pending schema migrations to the store the configuration names,
whatever its skip_migrations says. Run it as the schema's owner before
starting servers that connect with a role which may not change the schema
(docs/audit.md, "Database roles"); then run 'lapse admin grant-server-role'
again so the server's role has exactly its privileges on any new table.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			store, err := f.open(c.Context(), c, true)
			if err != nil {
				return err
			}
			defer store.Close()
			_, err = fmt.Fprintf(m.Stdout, "%s store is at schema version %d\n", store.Driver(), sqlstore.SchemaVersion())
			return err
		},
	}
	f.register(c)
	return c
}

func (m *Main) adminGrantServerRole() *cobra.Command {
	var f adminFlags
	c := &cobra.Command{
		Use:   "grant-server-role --config FILE ROLE",
		Short: "Give a PostgreSQL role exactly what lapse server needs, insert-only on the audit tables",
		Long: `Give the PostgreSQL role ROLE exactly the privileges 'lapse server' needs on
the store's schema: read and insert everywhere, update only where state
changes, and on the audit log's tables (events, the Merkle tree, its signed
checkpoints) and the approvals only read and insert — no role that runs a
server can rewrite or delete the evidence. Whatever else ROLE held on those
tables is revoked first, so running it again converges.

Run it as the schema's owner after 'lapse admin migrate'. Servers then
connect as ROLE with store.skip_migrations: true (docs/audit.md, "Database
roles").`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &usageError{err: lapse.FieldErrorf(lapse.EINVALID, "role", "give exactly one role name"), command: c.CommandPath()}
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			store, err := f.open(ctx, c, true)
			if err != nil {
				return err
			}
			defer store.Close()
			if err := store.GrantServerRole(ctx, args[0]); err != nil {
				return err
			}
			if err := recordServerRole(lapse.WithChannel(ctx, lapse.ChannelCLI), store, m.clock(), args[0], localActor()); err != nil {
				return err
			}
			_, err = fmt.Fprintf(m.Stdout, "role %s may now run lapse server; the audit tables are insert-only for it\n", clean(args[0]))
			return err
		},
	}
	f.register(c)
	return c
}

// recordServerRole records store.server_role_granted: an administrative act
// on who may write the evidence is evidence too.
func recordServerRole(ctx context.Context, store lapse.Store, clock lapse.Clock, role string, actor lapse.Principal) error {
	data, err := json.Marshal(map[string]any{"role": role, "insert_only": sqlstore.AuditTables})
	if err != nil {
		return err
	}
	return store.Update(ctx, func(tx lapse.Tx) error {
		return tx.AppendEvent(ctx, &lapse.Event{
			Time: clock.Now(), Type: lapse.EventServerRoleGranted,
			ActorID: actor.ID, ActorKind: actor.Kind, Channel: lapse.ChannelFrom(ctx),
			Outcome: "granted", Data: data,
		})
	})
}
