// Package version names this build of tandem: its software version and the
// configuration schema version. Units compare both (they travel in every
// heartbeat) to report a mismatch before syncing incompatible data.
//
// It must never depend on anything: every package may import it.
package version

import "fmt"

// Software version of tandem, major.minor.patch.
const (
	Major = 0
	Minor = 1
	Patch = 0
)

// Schema is the version of the configuration schema this build reads.
const Schema = 1

// String is the software version as "0.1.0".
func String() string { return Format([3]uint8{Major, Minor, Patch}) }

// Bytes is the software version as carried on the wire.
func Bytes() [3]uint8 { return [3]uint8{Major, Minor, Patch} }

// Format prints a wire version.
func Format(v [3]uint8) string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }
