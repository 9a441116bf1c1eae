// Command tandem is the HA cluster daemon and its command-line client. All
// of it lives in internal/cli; this file only hands over the arguments.
package main

import (
	"os"

	"github.com/tandem-ha/tandem/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
