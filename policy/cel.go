package policy

import (
	"context"
	"fmt"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"

	"github.com/lapsehq/lapse"
)

// Bounds on a condition, so that a policy cannot make a decision slow: a
// condition is short, and its evaluation stops at a fixed cost (a few
// thousand steps: list comprehensions over a large on-call list are fine,
// nested ones over it are not).
const (
	MaxConditionLength = 4096
	conditionCostLimit = 100_000
	conditionTimeout   = 100 * time.Millisecond
)

// The variables a condition sees (docs/policy.md, "Conditions"):
//
//	principal  {id, kind, name, groups, act}            who asks
//	request    {entitlement, duration, reason, ticket,  what is asked
//	            task_id, break_glass, starts_at, channel}
//	now        timestamp                                when it is decided
//	on_call    map of list name to principal IDs        the on-call lists
//
// Maps rather than declared message types: the policy author writes
// principal.id and request.duration > duration("1h"), and type errors
// in what the variables hold are caught by the fixtures of `lapse policy
// test`, which run every condition.
var env = func() *cel.Env {
	e, err := cel.NewEnv(
		cel.Variable("principal", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("request", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("now", cel.TimestampType),
		cel.Variable("on_call", cel.MapType(cel.StringType, cel.ListType(cel.StringType))),
		ext.Strings(),
	)
	if err != nil {
		panic(fmt.Sprintf("policy: CEL environment: %v", err)) // a programming error, found by every test
	}
	return e
}()

// Condition is a compiled CEL expression that yields a bool.
type Condition struct {
	Source string
	prg    cel.Program
}

// CompileCondition parses and type-checks src. The error is EINVALID and
// says what is wrong and where in the expression.
func CompileCondition(src string) (*Condition, error) {
	if len(src) > MaxConditionLength {
		return nil, lapse.Errorf(lapse.EINVALID, "condition is longer than %d bytes", MaxConditionLength)
	}
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return nil, lapse.Errorf(lapse.EINVALID, "condition does not compile: %s", iss.Err())
	}
	if t := ast.OutputType(); !t.IsExactType(types.BoolType) && !t.IsExactType(types.DynType) {
		return nil, lapse.Errorf(lapse.EINVALID, "condition must be true or false, not %s", t)
	}
	prg, err := env.Program(ast, cel.CostLimit(conditionCostLimit), cel.InterruptCheckFrequency(100))
	if err != nil {
		return nil, lapse.Errorf(lapse.EINVALID, "condition: %v", err)
	}
	return &Condition{Source: src, prg: prg}, nil
}

// Eval evaluates the condition on vars. A condition that fails to
// evaluate (a missing key, a type mismatch, its cost limit) is an error,
// which every caller treats as "no": a policy that cannot be evaluated
// never grants.
func (c *Condition) Eval(vars Vars) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), conditionTimeout)
	defer cancel()
	out, _, err := c.prg.ContextEval(ctx, vars.activation())
	if err != nil {
		return false, fmt.Errorf("condition %q: %w", c.Source, err)
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("condition %q gave %v, not true or false", c.Source, out.Value())
	}
	return b, nil
}

// Vars is what a condition is evaluated on.
type Vars struct {
	Principal *lapse.Principal
	// Groups are the principal's groups as the policy sees them
	// (Policy.GroupsOf).
	Groups  []string
	Request *lapse.Request
	Now     time.Time
	OnCall  map[string][]string
}

func (v Vars) activation() map[string]any {
	p := v.Principal
	if p == nil {
		p = &lapse.Principal{}
	}
	r := v.Request
	if r == nil {
		r = &lapse.Request{}
	}
	act := p.Act
	if act == nil {
		act = []string{}
	}
	groups := v.Groups
	if groups == nil {
		groups = []string{}
	}
	onCall := v.OnCall
	if onCall == nil {
		onCall = map[string][]string{}
	}
	request := map[string]any{
		"entitlement": r.Entitlement,
		"duration":    r.Duration.D(),
		"reason":      r.Reason,
		"ticket":      r.Ticket,
		"task_id":     r.TaskID,
		"break_glass": r.BreakGlass,
		"channel":     r.Channel,
		"extends":     r.Extends,
	}
	// A request without a scheduled start starts when it is decided.
	if r.StartsAt.IsZero() {
		request["starts_at"] = v.Now.UTC()
	} else {
		request["starts_at"] = r.StartsAt.UTC()
	}
	return map[string]any{
		"principal": map[string]any{
			"id":     p.ID,
			"kind":   string(p.Kind),
			"name":   p.Name,
			"groups": groups,
			"act":    act,
		},
		"request": request,
		"now":     v.Now.UTC(),
		"on_call": onCall,
	}
}
