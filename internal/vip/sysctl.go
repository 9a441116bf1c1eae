package vip

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"
)

// inNetNS runs fn on a thread in ns (nil: the calling thread's namespace).
// The thread is locked and never unlocked, so the runtime discards it when
// the goroutine ends instead of reusing a thread left in another namespace.
func inNetNS(ns *netns.NsHandle, fn func() error) error {
	if ns == nil {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(*ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// raiseSysctl sets net.ipv4.conf.<link>.<key> to min unless it is already
// at least min (the operator may have chosen a stricter value).
func raiseSysctl(log *slog.Logger, link, key string, min int) error {
	path := filepath.Join("/proc/sys/net/ipv4/conf", link, key)
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read net.ipv4.conf.%s.%s: %w", link, key, err)
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("parse net.ipv4.conf.%s.%s %q: %w", link, key, b, err)
	}
	if cur >= min {
		return nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(min)), 0o644); err != nil {
		return fmt.Errorf("set net.ipv4.conf.%s.%s=%d: %w", link, key, min, err)
	}
	log.Info("ARP sysctl raised for the virtual MAC", "sysctl", "net.ipv4.conf."+link+"."+key, "from", cur, "to", min)
	return nil
}
