package lapse

import (
	"fmt"
	"os"
	"strings"
)

// SecretRef is a configuration value that holds a secret (a DSN with a
// password, a key). In YAML it is either a plain string, or a map with
// exactly one of `file:` (read the file, trailing newline trimmed) or `env:`
// (read an environment variable), so the secret need not sit in the config
// file. It never prints its value.
type SecretRef struct {
	Value string `json:"-"`
	File  string `json:"file,omitempty"`
	Env   string `json:"env,omitempty"`
}

// UnmarshalYAML accepts a string or a {file|env|value} map. Its signature is
// the interface-unmarshaler shape YAML libraries recognise, so this package
// needs no YAML dependency.
func (s *SecretRef) UnmarshalYAML(unmarshal func(any) error) error {
	var str string
	if err := unmarshal(&str); err == nil {
		*s = SecretRef{Value: str}
		return nil
	}
	var m struct {
		Value string `yaml:"value"`
		File  string `yaml:"file"`
		Env   string `yaml:"env"`
	}
	if err := unmarshal(&m); err != nil {
		return fmt.Errorf("secret must be a string or a map with one of file, env, value")
	}
	n := 0
	for _, v := range []string{m.Value, m.File, m.Env} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("secret must set exactly one of file, env, value")
	}
	*s = SecretRef{Value: m.Value, File: m.File, Env: m.Env}
	return nil
}

// IsZero reports whether no source is configured.
func (s SecretRef) IsZero() bool { return s.Value == "" && s.File == "" && s.Env == "" }

// Resolve returns the secret. Errors name the source, never the value.
func (s SecretRef) Resolve() (string, error) {
	switch {
	case s.File != "":
		b, err := os.ReadFile(s.File)
		if err != nil {
			return "", fmt.Errorf("read secret file %s: %w", s.File, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case s.Env != "":
		v, ok := os.LookupEnv(s.Env)
		if !ok || v == "" {
			return "", fmt.Errorf("secret environment variable %s is not set", s.Env)
		}
		return v, nil
	default:
		return s.Value, nil
	}
}

// String never reveals the value.
func (s SecretRef) String() string {
	switch {
	case s.File != "":
		return "file:" + s.File
	case s.Env != "":
		return "env:" + s.Env
	case s.Value != "":
		return "(inline secret)"
	}
	return "(unset)"
}

// GoString never reveals the value, even under %#v.
func (s SecretRef) GoString() string { return "lapse.SecretRef(" + s.String() + ")" }
