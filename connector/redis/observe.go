package redis

import (
	"context"
	"errors"
	"strings"
	"sync"

	goredis "github.com/redis/go-redis/v9"
)

// batcher runs the requests of concurrent callers on one node together,
// one pipeline per batch (group commit): every command costs a round trip,
// and on the server a read and a write of its own, and CLIENT LIST costs
// the server time and bandwidth in proportion to every client it has. When
// many grants end together (a mass expiry) their revocations share round
// trips and transactions, and their verifications one CLIENT LIST, instead
// of each paying alone.
//
// Freshness is what makes sharing sound: a request only joins a batch that
// has not started yet, so what it gets was read after it was asked for,
// hence after the revocation it checks; and a write in a batch runs after
// it was asked for, never before.
type batcher[Req, Resp any] struct {
	// max bounds the requests of one batch (0: no bound), so one
	// pipeline, or one transaction, stays short on the server.
	max int
	// writes says the requests change the server. A caller that gives up
	// waiting still waits until its batch has run, so a write is never
	// reported as not done while it may still happen afterwards, behind
	// whatever the caller does next.
	writes bool
	// run answers every request of a batch, one response per request.
	run func(ctx context.Context, reqs []Req) []Resp

	mu    sync.Mutex
	queue []*batch[Req, Resp] // not started; the last one accepts requests
	busy  bool                // a batch is running
}

type batch[Req, Resp any] struct {
	reqs  []Req
	resps []Resp
	done  chan struct{}
}

// do returns a fresh answer to req. The caller whose arrival finds the
// node idle runs the batch itself, so a lone request costs one round trip
// and no goroutine.
func (b *batcher[Req, Resp]) do(ctx context.Context, req Req) (Resp, error) {
	if err := ctx.Err(); err != nil {
		// A caller that has already given up queues nothing.
		var zero Resp
		return zero, err
	}
	b.mu.Lock()
	var bt *batch[Req, Resp]
	if l := len(b.queue); l > 0 && (b.max == 0 || len(b.queue[l-1].reqs) < b.max) {
		bt = b.queue[l-1]
	} else {
		bt = &batch[Req, Resp]{done: make(chan struct{})}
		b.queue = append(b.queue, bt)
	}
	i := len(bt.reqs)
	bt.reqs = append(bt.reqs, req)
	// The node is idle only when nothing is queued, so the leader's batch
	// holds its own request alone.
	lead := !b.busy
	if lead {
		b.busy = true
		b.queue[0] = nil
		b.queue = b.queue[:0]
	}
	b.mu.Unlock()

	if lead {
		b.exec(bt)
		b.handOff()
		return bt.resps[i], nil
	}
	select {
	case <-bt.done:
	case <-ctx.Done():
		if !b.writes {
			var zero Resp
			return zero, ctx.Err()
		}
		<-bt.done
	}
	return bt.resps[i], nil
}

// handOff passes the node to a goroutine that runs the batches that
// gathered meanwhile, or marks it idle.
func (b *batcher[Req, Resp]) handOff() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		b.busy = false
		return
	}
	go b.drain()
}

func (b *batcher[Req, Resp]) drain() {
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.busy = false
			b.mu.Unlock()
			return
		}
		bt := b.queue[0]
		b.queue[0] = nil
		b.queue = b.queue[1:]
		b.mu.Unlock()
		b.exec(bt)
	}
}

// exec runs one batch. It does not use any caller's context: a caller that
// gives up must not fail the others sharing the batch. The clients'
// timeouts (Config.Timeout on every read and write, DialTimeout on a
// dial) bound it.
func (b *batcher[Req, Resp]) exec(bt *batch[Req, Resp]) {
	defer close(bt.done)
	bt.resps = b.run(context.Background(), bt.reqs)
}

// check is one verification request: the user, and the grant's password
// for the login probe ("" when the broker has no probe material).
type check struct{ user, password string }

// observation is what one look at a node saw for one user.
type observation struct {
	present bool
	reply   []any // ACL GETUSER, when present
	// clientsSeen counts every client CLIENT LIST showed; clients are
	// those authenticated as the user.
	clientsSeen int
	clients     []client
	probe       probeResult
	err         error
	batch       int // how many verifications shared the CLIENT LIST
}

// probeResult is the outcome of one login probe.
type probeResult struct {
	accepted bool
	outcome  string
	err      error
}

// observe answers a batch of verifications in one pipeline on the node's
// checker connection: ACL GETUSER for each user, one CLIENT LIST, then AUTH
// with each grant's password — a real login attempt, checked by the server
// as any client's. The AUTHs come last, so the listing never shows the
// checker connection as a grant's user. A failed AUTH leaves a connection
// logged in as it was, so the attempts do not affect each other or the
// commands around them. WRONGPASS is the only outcome that proves a login
// gone; any other error means the probe could not run.
//
// An accepted AUTH (or one whose outcome is unknown) may have left the
// connection logged in as that user: it is logged back in as the admin
// account before the batch returns, or, failing that, the checker is
// replaced, so the connection never acts again under the grant's identity.
func (n *node) observe(ctx context.Context, checks []check) []observation {
	out := make([]observation, len(checks))
	checker := n.checker.Load()
	cn := checker.Conn()
	defer cn.Close()
	pipe := cn.Pipeline()
	gets := make([]*goredis.Cmd, len(checks))
	for i, ch := range checks {
		gets[i] = pipe.Do(ctx, "ACL", "GETUSER", ch.user)
	}
	list := pipe.Do(ctx, "CLIENT", "LIST")
	auths := make([]*goredis.Cmd, len(checks))
	for i, ch := range checks {
		if ch.password != "" {
			auths[i] = pipe.Do(ctx, "AUTH", ch.user, ch.password)
		}
	}
	_, _ = pipe.Exec(ctx) // errors are read per command below

	loggedOut := false // the connection may no longer be the admin account's
	for i, a := range auths {
		switch err := authErr(a); {
		case a == nil:
			out[i].probe = probeResult{outcome: "not run: no probe material"}
		case err == nil:
			out[i].probe = probeResult{accepted: true, outcome: "accepted: AUTH succeeded"}
			loggedOut = true
		case goredis.HasErrorPrefix(err, "WRONGPASS"):
			out[i].probe = probeResult{outcome: "rejected: WRONGPASS"}
		default:
			out[i].probe = probeResult{err: nodeError(n, "login probe for "+checks[i].user, err)}
			loggedOut = true
		}
	}
	if loggedOut {
		if err := n.relogin(ctx, cn); err != nil {
			n.replaceChecker(checker)
		}
	}

	text, err := list.Text()
	if err != nil {
		for i := range out {
			out[i].err = nodeError(n, "client list", err)
		}
		return out
	}
	wanted := make(map[string]bool, len(checks))
	for _, ch := range checks {
		wanted[ch.user] = true
	}
	total, byUser := parseClientList(text, wanted)
	for i, g := range gets {
		r := &out[i]
		r.clientsSeen, r.clients, r.batch = total, byUser[checks[i].user], len(checks)
		reply, err := g.Slice()
		switch {
		case err == nil:
			r.present, r.reply = true, reply
		case errors.Is(err, goredis.Nil):
		default:
			r.err = nodeError(n, "get user "+checks[i].user, err)
		}
	}
	return out
}

func authErr(a *goredis.Cmd) error {
	if a == nil {
		return nil
	}
	return a.Err()
}

// relogin logs the checker connection back in as the admin account, with
// the credentials it was opened with.
func (n *node) relogin(ctx context.Context, cn *goredis.Conn) error {
	switch {
	case n.adminUser != "":
		return cn.Do(ctx, "AUTH", n.adminUser, n.adminPassword).Err()
	case n.adminPassword != "":
		return cn.Do(ctx, "AUTH", n.adminPassword).Err()
	default:
		// The admin account is the default user without a password, as
		// which RESET logs a connection in.
		_, err := cn.Pipelined(ctx, func(p goredis.Pipeliner) error {
			p.Do(ctx, "RESET")
			p.Do(ctx, "CLIENT", "SETNAME", clientName)
			return nil
		})
		return err
	}
}

// client is one CLIENT LIST entry.
type client struct{ id, addr, cmd string }

// parseClientList parses CLIENT LIST and returns the number of clients
// and the clients of the wanted users. Fields are space-separated
// key=value pairs and no field value can contain a space (client and
// library names cannot), so "user=" after a space or at the start of a line
// is the user field and a client cannot forge it. A large server lists
// thousands of clients and a verification reads the list whole, so the
// list is not split into lines: one scan finds each entry's user field,
// and only the entries of wanted users are read further. Redis ends every
// entry with a newline.
func parseClientList(list string, wanted map[string]bool) (total int, byUser map[string][]client) {
	byUser = map[string][]client{}
	total = strings.Count(list, "\n")
	if list != "" && list[len(list)-1] != '\n' {
		total++
	}
	const key = "user="
	for i := 0; i < len(list); {
		j := strings.Index(list[i:], key)
		if j < 0 {
			break
		}
		at := i + j // the key
		start := at + len(key)
		end := strings.IndexAny(list[start:], " \r\n")
		if end < 0 {
			end = len(list)
		} else {
			end += start
		}
		i = start
		if at > 0 && list[at-1] != ' ' && list[at-1] != '\n' {
			continue // inside a value (name=user=x) or another key
		}
		user := list[start:end]
		if !wanted[user] {
			continue
		}
		lineStart := strings.LastIndexByte(list[:at], '\n') + 1
		lineEnd := strings.IndexByte(list[end:], '\n')
		if lineEnd < 0 {
			lineEnd = len(list)
		} else {
			lineEnd += end
		}
		line := strings.TrimSpace(list[lineStart:lineEnd])
		byUser[user] = append(byUser[user], client{id: field(line, "id"), addr: field(line, "addr"), cmd: field(line, "cmd")})
	}
	return total, byUser
}

// field returns the value of key in a CLIENT LIST line.
func field(line, key string) string {
	var rest string
	if strings.HasPrefix(line, key+"=") {
		rest = line[len(key)+1:]
	} else if i := strings.Index(line, " "+key+"="); i >= 0 {
		rest = line[i+len(key)+2:]
	} else {
		return ""
	}
	if j := strings.IndexByte(rest, ' '); j >= 0 {
		rest = rest[:j]
	}
	return rest
}
