package main

import (
	"context"
	"strings"
	"testing"
)

func TestBadCommandLinesFailWithAReason(t *testing.T) {
	cases := map[string][]string{
		"no command":              nil,
		"an unknown command":      {"frobnicate"},
		"dump without a file":     {"journal", "dump"},
		"dump of nothing":         {"journal", "dump", "/nonexistent/journal"},
		"a bad size":              {"journal", "demo", "--journal-size", "12KB"},
		"an unknown journal verb": {"journal", "compact"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			err := run(context.Background(), args)
			if err == nil || strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("run(%q) = %v", args, err)
			}
		})
	}
}
