// Command jvol is jvol's one binary. Each role or operator verb is a
// subcommand; this package only parses flags and wires packages together.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/jvol-io/jvol/internal/driver"
)

const usage = `usage: jvol COMMAND [flags]

commands:
  attach --dir DIR [--name NAME] [--size SIZE] [--journal-size SIZE] [--fifo-size SIZE]
         [--commit-interval DUR] [--fs ext4|xfs --mount PATH] [--keeper=false] [--fuse go-fuse]
         [--sink tcp://HOST:PORT|tls://HOST:PORT [--duplex half|full] [--sink-token-file F]
          [--sink-ca F] [--sink-cert F --sink-key F]]
                             create (if needed), recover and serve the volume in DIR as a
                             loop device until SIGINT/SIGTERM; prints device=/dev/loopN.
                             The server runs as a child that is restarted if it dies;
                             SIGHUP hands over to a new one of the binary on disk
                             With --sink, the journal is also streamed to a receiver
                             (kept for the next attach; --sink "" removes it)
  sink --listen ADDR --dir DIR [--tls-cert F --tls-key F [--client-ca F]] [--token-file F]
       [--retain DURATION]
                             receive journal streams: a mirror image and the stream, per volume
  restore (--sink-dir DIR | --sink tls://HOST:PORT [--sink-ca F] [--sink-token-file F])
          --volume ID (--until TRANSID|--until RFC3339|--latest) --out FILE
                             write a volume's image as a receiver keeps it, at that point
                             (from its directory, or over the network), sparse
  status --dir DIR [--json]  the volume's figures, attached or not
  journal dump DIR-or-FILE   print the live records of a journal image, one per line
  writecheck --path DEV --size SIZE
                             a verifying writer (tests): random 4 KiB direct writes until
                             SIGTERM, then every block read back; prints a JSON report
  journal demo [--dir DIR]   run the journal engine alone: writers, flushes, checkpoints,
                             live figures, then crash recovery

CSI driver (flags: jvol ROLE -h):
  controller --endpoint unix://SOCK
                             CSI Identity and Controller; volumes are Journal objects
  node --endpoint unix://SOCK --node-id NAME [--state-dir /var/lib/jvol]
                             CSI Identity and Node; makes and serves this node's volumes
  standalone --endpoint unix://SOCK --node-id NAME --state-dir DIR
                             both, without Kubernetes: Journals kept in DIR/journals
  holder --socket PATH       keep the node plugin's FUSE connections (the node pod's
                             holder container): volumes outlive a plugin that dies
Sizes take Ki, Mi, Gi or Ti.
`

var errUsage = errors.New("see 'jvol help'")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "jvol:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Print(usage)
		return nil
	case "attach":
		return attachCmd(ctx, args[1:])
	case "status":
		return statusCmd(args[1:])
	case "sink":
		return sinkCmd(ctx, args[1:])
	case "restore":
		return restoreCmd(ctx, args[1:])
	case "journal":
		return journalCmd(ctx, args[1:])
	case "holder":
		return holderCmd(ctx, args[1:])
	case "writecheck":
		return writecheckCmd(ctx, args[1:])
	case "controller", "node", "standalone":
		return driverCmd(ctx, driver.Mode(args[0]), args[1:])
	}
	return fmt.Errorf("unknown command %q: %w", args[0], errUsage)
}
