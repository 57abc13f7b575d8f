package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBadCommandLinesFailWithAReason(t *testing.T) {
	cases := map[string][]string{
		"no command":                                   nil,
		"an unknown command":                           {"frobnicate"},
		"dump without a file":                          {"journal", "dump"},
		"dump of nothing":                              {"journal", "dump", "/nonexistent/journal"},
		"a bad size":                                   {"journal", "demo", "--journal-size", "12KB"},
		"an unknown journal verb":                      {"journal", "compact"},
		"attach without a directory":                   {"attach", "--size", "1Gi"},
		"attach of a new volume without a size":        {"attach", "--dir", "NEWDIR"},
		"attach with a size in decimal units":          {"attach", "--dir", "NEWDIR", "--size", "1GB"},
		"attach with a file system but no mount point": {"attach", "--dir", "NEWDIR", "--size", "1Gi", "--fs", "ext4"},
		"status of no volume":                          {"status", "--dir", "NEWDIR"},
		"node without a node id":                       {"node", "--state-dir", "NEWDIR"},
		"standalone without a node id":                 {"standalone", "--state-dir", "NEWDIR"},
		"standalone with a bad endpoint":               {"standalone", "--node-id", "n", "--state-dir", "NEWDIR", "--endpoint", "http://x"},
		"controller with an unknown flag":              {"controller", "--nodes", "3"},
	}
	// What these say: the reason itself, not that a child process failed.
	says := map[string]string{
		"attach of a new volume without a size":        "needs a size",
		"attach with a file system but no mount point": "go together",
	}
	for name, args := range cases {
		newDir := ""
		for i := range args {
			if args[i] == "NEWDIR" {
				newDir = filepath.Join(t.TempDir(), "vol")
				args[i] = newDir
			}
		}
		t.Run(name, func(t *testing.T) {
			err := run(context.Background(), args)
			if err == nil || strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("run(%q) = %v", args, err)
			}
			if !strings.Contains(err.Error(), says[name]) {
				t.Errorf("run(%q) = %v, want it to say %q", args, err, says[name])
			}
			// A refused attach makes nothing.
			if _, err := os.Stat(newDir); strings.HasPrefix(name, "attach") && newDir != "" && !os.IsNotExist(err) {
				t.Errorf("run(%q) left %s (%v)", args, newDir, err)
			}
		})
	}
}
