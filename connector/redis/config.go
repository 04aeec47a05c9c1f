package redis

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/lapsehq/lapse"
)

// Config is a Redis target's `config:` block.
//
//	config:
//	  prefix: lapse_
//	  nodes:
//	    - name: primary
//	      addr: redis-0.internal:6379
//	      username: lapse-admin
//	      password: {env: REDIS_ADMIN_PASSWORD}
//	    - name: replica-1
//	      addr: redis-1.internal:6379
//	      username: lapse-admin
//	      password: {file: /run/secrets/redis-admin}
//
// ACL users are not replicated, so every node that serves clients —
// the primary and each replica — must be listed: the connector creates,
// deletes and verifies the user on each of them.
type Config struct {
	// Nodes lists every server that accepts logins. At least one.
	Nodes []NodeConfig `yaml:"nodes" json:"nodes"`
	// Prefix starts every user name the connector makes (default
	// "lapse_"); Discover uses it to tell Lapse's users from others.
	// Changing it orphans the users of active grants.
	Prefix string `yaml:"prefix" json:"prefix,omitempty"`
	// ClientAddr is the address grantees are told to connect to
	// (Info["addr"]); default the first node's address.
	ClientAddr string `yaml:"client_addr" json:"client_addr,omitempty"`
	// DialTimeout bounds connecting to a node (default 5s); Timeout bounds
	// each command (default 5s).
	DialTimeout lapse.Duration `yaml:"dial_timeout" json:"dial_timeout,omitempty"`
	Timeout     lapse.Duration `yaml:"timeout" json:"timeout,omitempty"`
	// PoolSize is the number of admin connections kept per node (default
	// 16). Grants and revocations on one node run in parallel up to it.
	PoolSize int `yaml:"pool_size" json:"pool_size,omitempty"`
}

// NodeConfig is one Redis server.
type NodeConfig struct {
	// Name identifies the node in checkpoints and evidence; it must stay
	// stable while grants are active.
	Name string `yaml:"name" json:"name"`
	// Addr is host:port.
	Addr string `yaml:"addr" json:"addr"`
	// Username and Password are the connector's own admin account. It
	// needs RequiredPermissions, and New checks that it has them:
	//
	//	ACL SETUSER lapse-admin on >… +acl|setuser +acl|deluser +acl|getuser +acl|list +acl|cat
	//	    +client|kill +client|list +client|setname +multi +exec +ping
	//
	// ("+acl" instead of the five acl subcommands also works). No key or
	// channel patterns are needed. An empty Username authenticates as the
	// default user.
	Username string          `yaml:"username" json:"username,omitempty"`
	Password lapse.SecretRef `yaml:"password" json:"password,omitzero"`
	// TLS, when set, makes every connection to the node use TLS.
	TLS *TLSConfig `yaml:"tls" json:"tls,omitempty"`
}

// TLSConfig configures TLS to a node.
type TLSConfig struct {
	// CAFile is a PEM bundle of the CAs that sign the server certificate;
	// empty means the system roots.
	CAFile string `yaml:"ca_file" json:"ca_file,omitempty"`
	// ServerName overrides the name checked in the server certificate
	// (default the host part of Addr).
	ServerName string `yaml:"server_name" json:"server_name,omitempty"`
	// CertFile and KeyFile are a client certificate, for servers that
	// require one (tls-auth-clients yes).
	CertFile string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file" json:"key_file,omitempty"`
}

// Bounds on configuration values.
const (
	// DefaultPrefix starts user names unless Config.Prefix says otherwise.
	DefaultPrefix = "lapse_"
	// MaxPrefixLength and MaxGrantIDLength bound the two parts of a user
	// name, so a name is at most MaxUserNameLength bytes.
	MaxPrefixLength   = 16
	MaxGrantIDLength  = 48
	MaxUserNameLength = MaxPrefixLength + MaxGrantIDLength
	maxNodes          = 32
	maxNodeNameLength = 32
	defaultTimeout    = 5 * time.Second
	defaultPoolSize   = 16
)

// Validate checks the configuration and fills in defaults. It returns
// EINVALID naming the offending field.
func (c *Config) Validate() error {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !safeName(c.Prefix, MaxPrefixLength) || !isLower(c.Prefix[0]) {
		return lapse.FieldErrorf(lapse.EINVALID, "prefix", "prefix must start with a-z and use only a-z 0-9 _ -, at most %d characters", MaxPrefixLength)
	}
	if len(c.Nodes) == 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "nodes", "list at least one node")
	}
	if len(c.Nodes) > maxNodes {
		return lapse.FieldErrorf(lapse.ETOOLARGE, "nodes", "at most %d nodes", maxNodes)
	}
	seen := map[string]bool{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		field := fmt.Sprintf("nodes[%d]", i)
		if !safeName(n.Name, maxNodeNameLength) {
			return lapse.FieldErrorf(lapse.EINVALID, field+".name", "node name must use only a-z 0-9 _ -, 1 to %d characters", maxNodeNameLength)
		}
		if seen[n.Name] {
			return lapse.FieldErrorf(lapse.EINVALID, field+".name", "node name %s is used twice", n.Name)
		}
		seen[n.Name] = true
		if err := checkAddr(n.Addr); err != nil {
			return lapse.FieldErrorf(lapse.EINVALID, field+".addr", "%s", err.Error())
		}
		for j := 0; j < len(n.Username); j++ {
			if b := n.Username[j]; b <= ' ' || b == 0x7f {
				return lapse.FieldErrorf(lapse.EINVALID, field+".username", "username has a space or control character")
			}
		}
		if n.TLS != nil && (n.TLS.CertFile == "") != (n.TLS.KeyFile == "") {
			return lapse.FieldErrorf(lapse.EINVALID, field+".tls", "cert_file and key_file go together")
		}
	}
	if c.ClientAddr == "" {
		c.ClientAddr = c.Nodes[0].Addr
	} else if err := checkAddr(c.ClientAddr); err != nil {
		return lapse.FieldErrorf(lapse.EINVALID, "client_addr", "%s", err.Error())
	}
	if c.DialTimeout < 0 || c.Timeout < 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "timeout", "timeouts cannot be negative")
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = lapse.Duration(defaultTimeout)
	}
	if c.Timeout == 0 {
		c.Timeout = lapse.Duration(defaultTimeout)
	}
	if c.PoolSize < 0 || c.PoolSize > 1024 {
		return lapse.FieldErrorf(lapse.EINVALID, "pool_size", "pool_size must be 0 to 1024")
	}
	if c.PoolSize == 0 {
		c.PoolSize = defaultPoolSize
	}
	return nil
}

func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("address must be host:port")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("address has no valid port")
	}
	return nil
}

// safeName reports whether s is 1 to max characters of a-z 0-9 _ -.
func safeName(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isLower(c) || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
