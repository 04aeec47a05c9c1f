package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/fake"
	"github.com/lapsehq/lapse/connector/registry"
)

func TestOpenUnknownKind(t *testing.T) {
	_, err := registry.Open(context.Background(), "ldap", connector.Env{Name: "x"}, nil)
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "kind" {
		t.Fatalf("Open(ldap) = %v, want EINVALID on field kind", err)
	}
	for _, k := range []string{"fake", "mariadb", "postgres", "redis", "token"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error %q does not list the known kind %s", err, k)
		}
	}
}

func TestOpenFake(t *testing.T) {
	var decoded bool
	c, err := registry.Open(context.Background(), "fake", connector.Env{Name: "f", Clock: lapse.SystemClock{}, DataDir: t.TempDir()}, func(v any) error {
		decoded = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(*fake.Conn); !ok || !decoded {
		t.Errorf("Open(fake) = %T, decoded %v", c, decoded)
	}
	if cl, ok := c.(connector.Closer); ok {
		cl.Close()
	}
}

func TestOpenPassesDecodeErrors(t *testing.T) {
	want := lapse.Errorf(lapse.EINVALID, "bad block")
	_, err := registry.Open(context.Background(), "fake", connector.Env{Name: "f", Clock: lapse.SystemClock{}}, func(any) error { return want })
	if !errors.Is(err, want) {
		t.Errorf("Open = %v, want the decode error", err)
	}
}

func TestOpenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := registry.Open(ctx, "fake", connector.Env{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a cancelled context = %v", err)
	}
}

// TestEveryKindOpens makes sure each registered factory is callable with an
// empty configuration or rejects it with an input error, never a panic.
func TestEveryKindOpens(t *testing.T) {
	for kind := range registry.Kinds {
		t.Run(kind, func(t *testing.T) {
			env := connector.Env{Name: "t", Clock: lapse.SystemClock{}, DataDir: t.TempDir()}
			c, err := registry.Open(context.Background(), kind, env, func(any) error { return nil })
			if err != nil {
				if code := lapse.ErrorCode(err); code != lapse.EINVALID && code != lapse.EUNAVAILABLE {
					t.Errorf("Open(%s) with an empty configuration = %v (code %s)", kind, err, code)
				}
				return
			}
			if cl, ok := c.(connector.Closer); ok {
				cl.Close()
			}
		})
	}
}
