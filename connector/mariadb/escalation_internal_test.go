package mariadb

import (
	"slices"
	"testing"
)

// TestParseGrantLine: SHOW GRANTS lines are read by their structure, so
// names that hold keywords, quotes or spaces cannot move the ON, TO or
// WITH of a line.
func TestParseGrantLine(t *testing.T) {
	cases := []struct {
		line string
		want grantLine
		ok   bool
	}{
		{"GRANT `r2` TO `r1`", grantLine{grantee: "r1", role: "r2"}, true},
		{"GRANT `r2` TO `r1` WITH ADMIN OPTION", grantLine{grantee: "r1", role: "r2", admin: true}, true},
		{"GRANT USAGE ON *.* TO `r`", grantLine{grantee: "r", privileges: []string{"USAGE"}, global: true}, true},
		{"GRANT SUPER, SET USER ON *.* TO `r` WITH GRANT OPTION", grantLine{grantee: "r", privileges: []string{"SUPER", "SET USER"}, global: true, grantOpt: true}, true},
		{"GRANT SELECT (`a`, `b`), UPDATE (`a`) ON `d`.`t` TO `r`", grantLine{grantee: "r", privileges: []string{"SELECT", "UPDATE"}, db: "d", table: "t"}, true},
		{"GRANT EXECUTE ON PROCEDURE `d`.`p` TO `r` WITH GRANT OPTION", grantLine{grantee: "r", privileges: []string{"EXECUTE"}, db: "d", table: "p", grantOpt: true}, true},
		{"GRANT SELECT ON `a\\_b`.* TO `r`", grantLine{grantee: "r", privileges: []string{"SELECT"}, db: `a\_b`, table: "*"}, true},
		// A name that reads like the rest of a line stays a name.
		{"GRANT SELECT ON `x TO y`.`ON WITH GRANT OPTION` TO `r`", grantLine{grantee: "r", privileges: []string{"SELECT"}, db: "x TO y", table: "ON WITH GRANT OPTION"}, true},
		{"GRANT `a``b` TO `r`", grantLine{grantee: "r", role: "a`b"}, true},
		{"GRANT PROXY ON ''@'%' TO 'u'@'%' WITH GRANT OPTION", grantLine{grantee: "u@%", privileges: []string{"PROXY"}, proxy: "''@'%'", grantOpt: true}, true},
		{"SET DEFAULT ROLE `r` FOR `u`@`%`", grantLine{}, false},
	}
	for _, tc := range cases {
		got, ok := parseGrantLine(tc.line)
		if ok != tc.ok {
			t.Errorf("%s: ok = %v", tc.line, ok)
			continue
		}
		if !ok {
			continue
		}
		if got.grantee != tc.want.grantee || got.role != tc.want.role || got.admin != tc.want.admin || !slices.Equal(got.privileges, tc.want.privileges) ||
			got.global != tc.want.global || got.db != tc.want.db || got.table != tc.want.table || got.proxy != tc.want.proxy || got.grantOpt != tc.want.grantOpt {
			t.Errorf("%s:\n got  %+v\n want %+v", tc.line, got, tc.want)
		}
	}
}

// TestLikeMatch: a database-level grant's pattern matches the mysql schema
// exactly as MariaDB would match it.
func TestLikeMatch(t *testing.T) {
	for p, want := range map[string]bool{
		"mysql": true, "MySQL": true, "%": true, "m%": true, "my_ql": true, "my\\_ql": false,
		"mysql_": false, "%sql": true, "mysqlx": false, "m\\%": false, "": false, "_____": true,
	} {
		if got := likeMatch(p, "mysql"); got != want {
			t.Errorf("likeMatch(%q, mysql) = %v, want %v", p, got, want)
		}
	}
}
