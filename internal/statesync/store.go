package statesync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/ctsync"
	"github.com/tandem-ha/tandem/internal/nftsets"
	"github.com/tandem-ha/tandem/internal/repl"
)

// store is the sink's repl.Store: it routes each table to the adapter that
// owns it — conntrack and expectations to the kernel conntrack sink, set
// elements to the nftables sink. Tables it has no adapter for are dropped
// (the peer synchronizes something this unit does not: a configuration
// difference the status shows).
type store struct {
	log  *slog.Logger
	ct   *ctsync.Sink
	sets *nftsets.Sink
}

var _ repl.Store = (*store)(nil)

func openStore(cfg Config) (*store, error) {
	s := &store{log: cfg.Logger}
	var errs []error
	if cfg.Conntrack {
		ct, err := ctsync.OpenSink(cfg.NS, cfg.Logger, ctsync.SinkOptions{Mode: cfg.Mode})
		if err != nil {
			errs = append(errs, fmt.Errorf("conntrack sink: %w", err))
		} else {
			s.ct = ct
		}
	}
	if len(cfg.NftSets) > 0 {
		sets, err := nftsets.OpenSink(cfg.NS, cfg.NftSets, cfg.Logger)
		if err != nil {
			errs = append(errs, fmt.Errorf("nft set sink: %w", err))
		} else {
			s.sets = sets
		}
	}
	return s, errors.Join(errs...)
}

func (s *store) route(table string) repl.Store {
	switch {
	case table == ctsync.TableConntrack || table == ctsync.TableExpect:
		if s.ct != nil {
			return s.ct
		}
	case strings.HasPrefix(table, nftsets.ReplTablePrefix):
		if s.sets != nil {
			return s.sets
		}
	}
	return nil
}

func (s *store) Put(table string, key, value []byte) {
	if t := s.route(table); t != nil {
		t.Put(table, key, value)
	}
}

func (s *store) Delete(table string, key []byte) {
	if t := s.route(table); t != nil {
		t.Delete(table, key)
	}
}

func (s *store) Reset(table string) {
	if t := s.route(table); t != nil {
		t.Reset(table)
	}
}

// promote makes the held state the kernel's: in inject mode the entries
// are already there and get their replicated timeouts back; in hold mode
// they are written now.
func (s *store) promote(log *slog.Logger) *PromoteReport {
	rep := &PromoteReport{At: time.Now()}
	if s.sets != nil {
		if err := s.sets.Flush(); err != nil {
			log.Warn("state sync: flush set elements at promotion", "err", err)
		}
	}
	if s.ct == nil {
		return rep
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ps, err := s.ct.Promote(ctx)
	rep.Flows, rep.Failed, rep.Duration = ps.Flows, ps.Failed, float64(ps.Duration)/1e6
	if err != nil {
		log.Error("state sync: promotion incomplete", "err", err, "failed", ps.Failed)
	}
	log.Info("state sync: promoted", "flows", ps.Flows, "failed", ps.Failed, "duration", ps.Duration)
	return rep
}

func (s *store) close() {
	if s.ct != nil {
		_ = s.ct.Close()
	}
	if s.sets != nil {
		_ = s.sets.Close()
	}
}
