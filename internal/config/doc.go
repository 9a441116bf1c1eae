// Package config defines tandem's configuration file: its schema, its
// defaults, and the rules that decide whether a file is usable.
//
// The file (DefaultPath, /etc/tandem/tandem.yaml) is identical on both units
// except for the node section. Parse turns its bytes into a Config, fills in
// defaults and validates it; Validate checks a Config however it was built.
// Both report every problem at once as a *Problems error, each naming the
// offending path, the bad value and how to fix it, so an operator can repair
// a file in one pass instead of one restart per typo.
//
// Parse and Validate are pure: they read nothing but their input. The one
// exception is Load, which reads the configuration file and the cluster key
// file it names; nothing else in this package touches the file system. The
// package never touches the network, never looks at the running system
// (interfaces, addresses, hostnames), and keeps no global state, so it is
// safe to call from any goroutine and from tests.
package config
