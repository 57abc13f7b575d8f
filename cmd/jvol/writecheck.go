package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/jvol-io/jvol/internal/sizes"
	"github.com/jvol-io/jvol/internal/writecheck"
)

// writecheckCmd runs a verifying writer until SIGINT/SIGTERM, then checks
// every block it wrote and prints one line of JSON: a test of the data
// path (the e2e suite runs it in pods). --stop sends SIGTERM to process 1,
// the writer of a container; --lap sends it SIGUSR1, on which it prints
// {"lapMs":N}: the longest a write took since the last lap.
func writecheckCmd(ctx context.Context, args []string) error {
	fs := newFlags("writecheck")
	path := fs.String("path", "", "the block device or file to write")
	var size sizes.Flag
	fs.Var(&size, "size", "how much of it to write (a file is made that large)")
	seed := fs.Uint64("seed", 1, "of the random offsets")
	stop := fs.Bool("stop", false, "stop the writer that is process 1 (in a container)")
	lap := fs.Bool("lap", false, "have the writer that is process 1 print its longest write since the last lap")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stop {
		return syscall.Kill(1, syscall.SIGTERM)
	}
	if *lap {
		return syscall.Kill(1, syscall.SIGUSR1)
	}
	if *path == "" || size == 0 {
		return fmt.Errorf("--path and --size are required: %w", errUsage)
	}
	w, err := writecheck.Open(*path, int64(size))
	if err != nil {
		return err
	}
	laps := make(chan os.Signal, 1)
	signal.Notify(laps, syscall.SIGUSR1)
	defer func() {
		signal.Stop(laps)
		close(laps)
	}()
	go func() {
		for range laps {
			fmt.Printf("{\"lapMs\":%.1f}\n", float64(w.Lap().Microseconds())/1000)
		}
	}()
	werr := w.Run(ctx.Done(), *seed, nil)
	verr := w.Verify()
	report := struct {
		Writes    uint64  `json:"writes"`
		Blocks    int     `json:"blocks"`
		LongestMs float64 `json:"longestMs"`
		WriteErr  string  `json:"writeError,omitempty"`
		VerifyErr string  `json:"verifyError,omitempty"`
	}{w.Writes(), w.Blocks(), float64(w.Longest().Microseconds()) / 1000, errText(werr), errText(verr)}
	b, _ := json.Marshal(report)
	fmt.Println(string(b))
	return errors.Join(werr, verr, w.Close())
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
