package mariadb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// Verify checks, read-only and without trusting Revoke, that the grant's
// user is gone: no account, no role or privilege rows, no grants it made,
// no objects it is the definer of (unless Definers is "keep"), no
// connection in the process list, and a real login with the grant's
// password is refused. It returns one result for the account (target) and
// one for its sessions. A residue is reported in the result; an error
// (EUNAVAILABLE) means the check could not run.
func (c *Conn) Verify(ctx context.Context, req *connector.VerifyRequest) (*connector.VerifyResponse, error) {
	if err := checkGrantID(req.GrantID); err != nil {
		return nil, err
	}
	st := c.decodeState(req.GrantID, req.State)
	users := c.users(req.GrantID, st)
	account := connector.CheckpointResult{Name: c.name + ":" + checkpointAccount, Kind: lapse.CheckpointTarget}
	sessions := connector.CheckpointResult{Name: c.name + ":" + checkpointSessions, Kind: lapse.CheckpointSessions}
	counts := map[string]int{}
	var sessionIDs []string
	probeUser := users[0]
	if st.User != "" {
		probeUser = st.User
	}
	// The catalog reads run alongside the process list read and the login
	// probe, which follows it (so that the probe's own handshake is not in
	// the list): the three are independent, and each is read after the
	// call began.
	var (
		traces   []*userTrace
		traceErr error
		wg       sync.WaitGroup
	)
	wg.Go(func() { traces, traceErr = c.traces(ctx, users, true) })
	var probe string
	var loginOK bool
	err := func() error {
		if !c.cfg.UnsafeSkipSessionKill { // otherwise sessions are neither ended nor checked
			for _, u := range users {
				ids, res, err := c.sessionResidue(ctx, u)
				if err != nil {
					return err
				}
				sessionIDs = append(sessionIDs, ids...)
				sessions.Residue = append(sessions.Residue, res...)
			}
		}
		var err error
		probe, loginOK, err = c.loginProbe(ctx, probeUser, req.Probe["password"])
		return err
	}()
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if traceErr != nil {
		return nil, traceErr
	}
	for i, u := range users {
		tr := traces[i]
		for k, v := range map[string]int{
			"accounts": tr.accounts, "role_grants": tr.roleGrants, "database_grants": tr.dbGrants,
			"table_grants": tr.tableGrants, "column_grants": tr.columnGrants,
			"routine_grants": tr.routineGrants, "proxy_grants": tr.proxyGrants,
			"definer_objects": len(tr.objects), "grants_made_to_others": len(tr.grants),
		} {
			counts[k] += v
		}
		account.Residue = append(account.Residue, c.accountResidue(ctx, u, tr)...)
	}
	if loginOK {
		account.Residue = append(account.Residue, "login as "+probeUser+" with the grant's password succeeded")
	}
	now := c.now()
	account.Evidence = map[string]any{
		"users":          users,
		"queried":        catalogTables,
		"definer_policy": c.cfg.Definers,
		"login_probe":    probe,
		"address":        c.cfg.Address,
		"checked_at":     now,
	}
	for k, v := range counts {
		account.Evidence[k] = v
	}
	sessions.Evidence = map[string]any{
		"users":       users,
		"queried":     "SHOW PROCESSLIST",
		"connections": len(sessions.Residue),
		"checked_at":  now,
	}
	if len(sessionIDs) > 0 {
		sessions.Evidence["connection_ids"] = sessionIDs
	}
	account.Gone = len(account.Residue) == 0
	sessions.Gone = len(sessions.Residue) == 0
	if c.cfg.UnsafeSkipSessionKill {
		account.Evidence["unsafe_skip_session_kill"] = true
		return &connector.VerifyResponse{Checkpoints: []connector.CheckpointResult{account}}, nil
	}
	return &connector.VerifyResponse{Checkpoints: []connector.CheckpointResult{account, sessions}}, nil
}

func (c *Conn) now() time.Time {
	if c.clock != nil {
		return c.clock.Now()
	}
	return time.Now().UTC()
}

// accountResidue describes what trace found, naming accounts and roles
// where a short query can.
func (c *Conn) accountResidue(ctx context.Context, user string, t *userTrace) []string {
	var res []string
	if t.accounts > 0 {
		hosts, err := c.accountHosts(ctx, user)
		if err != nil || len(hosts) == 0 {
			res = append(res, fmt.Sprintf("%d account(s) named %s exist", t.accounts, user))
		}
		for _, h := range hosts {
			res = append(res, "account "+user+"@"+h+" exists")
		}
	}
	if t.roleGrants > 0 {
		res = append(res, c.roleResidue(ctx, user, t.roleGrants)...)
	}
	for _, x := range []struct {
		n    int
		what string
	}{
		{t.dbGrants, "mysql.db"}, {t.tableGrants, "mysql.tables_priv"}, {t.columnGrants, "mysql.columns_priv"},
		{t.routineGrants, "mysql.procs_priv"}, {t.proxyGrants, "mysql.proxies_priv"},
	} {
		if x.n > 0 {
			res = append(res, fmt.Sprintf("%d privilege row(s) of %s in %s", x.n, user, x.what))
		}
	}
	if c.cfg.Definers != DefinerKeep {
		for _, o := range t.objects {
			res = append(res, "definer object left: "+o.String())
		}
	}
	for _, g := range t.grants {
		res = append(res, "privilege granted by "+user+" left: "+g.String())
	}
	return res
}

func (c *Conn) roleResidue(ctx context.Context, user string, n int) []string {
	rows, err := c.db.QueryContext(ctx, `SELECT Host, Role FROM mysql.roles_mapping WHERE User = ?`, user)
	if err != nil {
		return []string{fmt.Sprintf("%d role grant(s) to %s", n, user)}
	}
	defer rows.Close()
	var res []string
	for rows.Next() {
		var h, r string
		if rows.Scan(&h, &r) == nil {
			res = append(res, "role "+r+" granted to "+user+"@"+h)
		}
	}
	if len(res) == 0 {
		res = append(res, fmt.Sprintf("%d role grant(s) to %s", n, user))
	}
	return res
}

// sessionResidue lists the connections of user still in the process list.
// A login attempt in progress is listed under the name it tries, with
// command "Connect", before the server refuses it (Verify's own probe is
// one); such rows are read again for a moment, and only one that stays, or
// any row past the handshake, is residue.
func (c *Conn) sessionResidue(ctx context.Context, user string) ([]string, []string, error) {
	pause := time.Millisecond
	for {
		ids, res, handshakes, err := c.listSessions(ctx, user)
		if err != nil || handshakes < len(res) || handshakes == 0 || pause > 128*time.Millisecond {
			return ids, res, err
		}
		select {
		case <-ctx.Done():
			return nil, nil, c.unavailable("mariadb: verify: list connections of "+user, ctx.Err())
		case <-time.After(pause):
		}
		pause *= 2
	}
}

func (c *Conn) listSessions(ctx context.Context, user string) (ids, res []string, handshakes int, err error) {
	threads, err := c.processList(ctx, user)
	if err != nil {
		return nil, nil, 0, err
	}
	for _, t := range threads {
		if t.Command == "Connect" {
			handshakes++
		}
		ids = append(ids, fmt.Sprint(t.ID))
		res = append(res, fmt.Sprintf("connection %d of %s from %s (%s, %ds)", t.ID, user, t.Host, t.Command, t.Time))
	}
	return ids, res, handshakes, nil
}

// loginProbe tries a real login as user with password. It reports what
// happened (never the password), and whether the server accepted the
// credentials. A refusal for any reason other than the credentials (the
// server is full, the network is down) means the check could not run.
func (c *Conn) loginProbe(ctx context.Context, user, password string) (string, bool, error) {
	if password == "" {
		return "skipped: no probe material", false, nil
	}
	pc := c.admin.Clone()
	pc.User = user
	pc.Passwd = password
	pc.DBName = ""
	pc.Timeout = c.cfg.ProbeTimeout.D()
	pc.InterpolateParams = false
	// The probe must never put the password on the wire in clear, whatever
	// the admin DSN allows for itself.
	pc.AllowCleartextPasswords = false
	if c.cfg.Address != c.admin.Addr {
		pc.Net = "tcp"
		pc.Addr = c.cfg.Address
	}
	mc, err := mysql.NewConnector(pc)
	if err != nil {
		return "", false, lapse.Internal("mariadb: verify: login probe config", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout.D())
	defer cancel()
	dc, err := mc.Connect(ctx)
	if err == nil {
		dc.Close()
		return "accepted: login succeeded", true, nil
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case errAccessDenied, errAccessDeniedNoPassword:
			return fmt.Sprintf("denied: access denied (%d)", me.Number), false, nil
		case errAccountLocked:
			return "denied: account locked (4151)", false, nil
		case errUserLimitReached:
			// The server checks the per-user limit after authentication:
			// the credentials were accepted.
			return "accepted: authenticated, then refused by max_user_connections (1226)", true, nil
		}
		return "", false, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "mariadb login probe was inconclusive",
			Err: fmt.Errorf("mariadb: verify: login probe as %s: server error %d", user, me.Number)}
	}
	return "", false, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "mariadb login probe could not connect",
		Err: fmt.Errorf("mariadb: verify: login probe as %s: %w", user, err)}
}
