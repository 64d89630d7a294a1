// Package metrics serves the appliance's counters in Prometheus' text
// format with the official client library: named counter sets the caller
// supplies (netstack's statistics, link, relay). Start with New, then
// Serve.
package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "appliance"

// Kind tells Prometheus how to read a value.
type Kind int

// Kinds of Source values.
const (
	Counter Kind = iota // only grows
	Gauge               // goes up and down
)

// Source is a named set of values read at each scrape, e.g. the TUN link's
// counters. Names are snake_case; the metric is appliance_<Name>_<key>
// (with _total for counters).
type Source struct {
	Name string
	Help string
	Kind Kind
	Read func() map[string]uint64
	// Labels and ReadLabeled, instead of Read, give labelled values:
	// appliance_<Name>_<Sample.Key> with Labels set to Sample.Values.
	Labels      []string
	ReadLabeled func() []Sample
}

// Sample is one labelled value of a Source.
type Sample struct {
	Key    string
	Values []string // one per Source.Labels
	Value  uint64
}

// New returns a registry with Go runtime and process metrics and the
// sources.
func New(sources ...Source) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, err
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, err
	}
	for _, s := range sources {
		if s.Name == "" || (s.Read == nil) == (s.ReadLabeled == nil) {
			return nil, fmt.Errorf("metrics source %q: needs a name and one of Read or ReadLabeled", s.Name)
		}
	}
	if err := reg.Register(&collector{sources: sources}); err != nil {
		return nil, err
	}
	return reg, nil
}

// collector is unchecked (Describe sends nothing): the set of counters is
// read from the structures at scrape time.
type collector struct {
	sources []Source
}

func (*collector) Describe(chan<- *prometheus.Desc) {}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.sources {
		vt := prometheus.CounterValue
		if s.Kind == Gauge {
			vt = prometheus.GaugeValue
		}
		fq := func(k string) string {
			name := prometheus.BuildFQName(Namespace, s.Name, k)
			if s.Kind == Counter && !strings.HasSuffix(name, "_total") {
				name += "_total"
			}
			return name
		}
		if s.ReadLabeled != nil {
			for _, smp := range s.ReadLabeled() {
				if len(smp.Values) != len(s.Labels) {
					continue
				}
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(fq(smp.Key), s.Help, s.Labels, nil), vt, float64(smp.Value), smp.Values...)
			}
			continue
		}
		for k, v := range s.Read() {
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(fq(k), s.Help, nil, nil), vt, float64(v))
		}
	}
}

// Server serves /metrics.
type Server struct {
	srv *http.Server
	ln  net.Listener
	wg  sync.WaitGroup
}

// Serve listens on addr (host:port) and serves reg at /metrics.
func Serve(addr string, reg *prometheus.Registry, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s := &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics serving", "addr", ln.Addr().String())
	return s, nil
}

// Addr is the address it listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server.
func (s *Server) Close() error {
	err := s.srv.Close()
	s.wg.Wait()
	return err
}
