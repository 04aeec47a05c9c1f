package workload

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"

	"github.com/lapsehq/lapse"
)

// MaxGroups bounds how many groups a mapping may give one principal.
const MaxGroups = 64

// costLimit bounds the work of one evaluation. Mappings are a handful of
// field accesses and concatenations (cost well under 100); the bound is
// there so that a comprehension over a hostile claim (a list of a
// thousand entries) cannot make token checks expensive.
const costLimit = 10_000

// mapping is an issuer's compiled CEL expressions. A cel.Program is safe
// for concurrent use.
type mapping struct {
	principal cel.Program
	groups    cel.Program // nil: no groups
	name      cel.Program // nil: the principal ID
	require   cel.Program // nil: every verified token
}

var (
	envOnce sync.Once
	envVal  *cel.Env
	envErr  error
)

// celEnv is the one CEL environment of every mapping: the verified claims
// as a map named claims, and the standard string extensions (split,
// lowerAscii, replace, …) that mappings of CI subjects need.
func celEnv() (*cel.Env, error) {
	envOnce.Do(func() {
		envVal, envErr = cel.NewEnv(
			cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)),
			ext.Strings(),
			cel.CrossTypeNumericComparisons(true),
		)
	})
	return envVal, envErr
}

// The result types a mapping's expressions may have. dyn is accepted
// because claims are dynamic (claims.sub is dyn); its value is checked when
// it is evaluated.
var (
	stringResult = []*cel.Type{cel.StringType, cel.DynType}
	boolResult   = []*cel.Type{cel.BoolType, cel.DynType}
	listResult   = []*cel.Type{cel.ListType(cel.StringType), cel.ListType(cel.DynType), cel.DynType}
)

// compileMapping compiles and type-checks the issuer's expressions. Errors
// are EINVALID naming the option.
func compileMapping(c *IssuerConfig) (*mapping, []error) {
	env, err := celEnv()
	if err != nil {
		return nil, []error{lapse.Internal("cel environment", err)}
	}
	var errs []error
	compile := func(field, src string, want []*cel.Type, what string) cel.Program {
		if src == "" {
			return nil
		}
		if len(src) > MaxExpressionLength {
			errs = append(errs, lapse.FieldErrorf(lapse.EINVALID, field, "the expression is longer than %d bytes", MaxExpressionLength))
			return nil
		}
		ast, iss := env.Compile(src)
		if iss.Err() != nil {
			errs = append(errs, lapse.FieldErrorf(lapse.EINVALID, field, "CEL expression does not compile: %s", describeIssues(iss)))
			return nil
		}
		out := ast.OutputType()
		ok := false
		for _, w := range want {
			ok = ok || out.IsExactType(w)
		}
		if !ok {
			errs = append(errs, lapse.FieldErrorf(lapse.EINVALID, field, "CEL expression has type %s; it must be %s", out, what))
			return nil
		}
		prg, err := env.Program(ast, cel.CostLimit(costLimit), cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			errs = append(errs, lapse.FieldErrorf(lapse.EINVALID, field, "CEL expression cannot be planned: %v", err))
			return nil
		}
		return prg
	}
	m := &mapping{
		principal: compile("principal", c.Principal, stringResult, "a string (the principal ID)"),
		groups:    compile("groups", c.Groups, listResult, "a list of strings"),
		name:      compile("display_name", c.DisplayName, stringResult, "a string"),
		require:   compile("require", c.Require, boolResult, "a bool"),
	}
	if c.Principal == "" {
		errs = append(errs, lapse.FieldErrorf(lapse.EINVALID, "principal", `required: a CEL expression giving the service principal's ID, like '"svc:" + claims.sub'`))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return m, nil
}

// describeIssues renders CEL's errors on one line, with their positions
// inside the expression.
func describeIssues(iss *cel.Issues) string {
	var parts []string
	for _, e := range iss.Errors() {
		parts = append(parts, fmt.Sprintf("%d:%d: %s", e.Location.Line(), e.Location.Column()+1, e.Message))
	}
	if len(parts) == 0 {
		return iss.String()
	}
	return strings.Join(parts, "; ")
}

// identity is what a mapping makes of verified claims.
type identity struct {
	id     string
	name   string
	groups []string
}

var stringsType = reflect.TypeFor[[]string]()

// apply evaluates the mapping on verified claims. Every failure is
// EUNAUTHORIZED: the token is refused.
func (m *mapping) apply(claims map[string]any) (*identity, error) {
	vars := map[string]any{"claims": claims}
	refuse := func(field string, err error) error {
		// The token was genuine but does not fit what this issuer's
		// tokens must look like.
		return refusal(ReasonMapping, fmt.Errorf("mapping %s: %w", field, err))
	}
	if m.require != nil {
		v, _, err := m.require.Eval(vars)
		if err != nil {
			return nil, refuse("require", err)
		}
		if b, ok := v.Value().(bool); !ok || !b {
			return nil, refusal(ReasonRequire, errors.New("require is not true"))
		}
	}
	str := func(field string, prg cel.Program) (string, error) {
		v, _, err := prg.Eval(vars)
		if err != nil {
			return "", refuse(field, err)
		}
		s, ok := v.Value().(string)
		if !ok || v.Type() != types.StringType {
			return "", refuse(field, fmt.Errorf("result is a %s, not a string", v.Type().TypeName()))
		}
		return s, nil
	}
	raw, err := str("principal", m.principal)
	if err != nil {
		return nil, err
	}
	id, err := lapse.NormalizeID(raw)
	if err != nil {
		return nil, refuse("principal", err)
	}
	out := &identity{id: id, name: id}
	if m.name != nil {
		n, err := str("display_name", m.name)
		if err != nil {
			return nil, err
		}
		if n = strings.TrimSpace(n); n != "" && len(n) <= lapse.MaxIDLength {
			out.name = n
		}
	}
	if m.groups != nil {
		v, _, err := m.groups.Eval(vars)
		if err != nil {
			return nil, refuse("groups", err)
		}
		native, err := v.ConvertToNative(stringsType)
		if err != nil {
			return nil, refuse("groups", fmt.Errorf("result is not a list of strings"))
		}
		list := native.([]string)
		if len(list) > MaxGroups {
			return nil, refuse("groups", fmt.Errorf("%d groups, more than %d", len(list), MaxGroups))
		}
		for _, g := range list {
			n, err := lapse.NormalizeID(g)
			if err != nil {
				return nil, refuse("groups", err)
			}
			if !containsString(out.groups, n) {
				out.groups = append(out.groups, n)
			}
		}
	}
	return out, nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
