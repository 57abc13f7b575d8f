// Command jvol is jvol's one binary. Each role or operator verb is a
// subcommand; this file only parses flags and wires packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/jvol-io/jvol/pkg/jtool"
	"github.com/jvol-io/jvol/pkg/sizes"
)

const usage = `usage: jvol COMMAND [flags]

commands:
  journal dump DIR-or-FILE   print the live records of a journal image, one per line
  journal demo [--dir DIR]   run the journal engine: concurrent writers, flushes,
                             checkpoints, live figures, then crash recovery
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "jvol:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("see 'jvol help'")

func run(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Print(usage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	if args[0] != "journal" || len(args) < 2 {
		return fmt.Errorf("unknown command %q: %w", args[0], errUsage)
	}
	switch args[1] {
	case "dump":
		if len(args) != 3 {
			return fmt.Errorf("journal dump takes one DIR or FILE: %w", errUsage)
		}
		return jtool.Dump(os.Stdout, args[2])
	case "demo":
		fs := flag.NewFlagSet("journal demo", flag.ContinueOnError)
		dir := fs.String("dir", "", "directory for the journal image (default: a new temporary one)")
		size := fs.String("journal-size", "64Mi", "journal image size")
		writers := fs.Int("writers", 8, "concurrent writers")
		records := fs.Int("records", 2000, "records per writer")
		if err := fs.Parse(args[2:]); err != nil {
			return err
		}
		n, err := sizes.Parse(*size)
		if err != nil {
			return fmt.Errorf("--journal-size: %w", err)
		}
		if *dir == "" {
			d, err := os.MkdirTemp("", "jvol-demo-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(d)
			*dir = d
		}
		return jtool.Demo(ctx, os.Stdout, jtool.DemoOptions{Dir: *dir, JournalSize: n, Writers: *writers, Records: *records})
	}
	return fmt.Errorf("unknown journal command %q: %w", args[1], errUsage)
}
