// Package writeload drives writes at a cluster's API as fast as concurrent clients can
// make them, and measures them: what scripts/bench-writes reports. Each write creates a
// stopped guest (no QEMU is started for it), the write dvm does most.
package writeload

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// Options say what to drive.
type Options struct {
	// Clients is how many creates are in flight at once, each waiting for its answer
	// before it sends the next.
	Clients int
	// Count is how many creates to make in all.
	Count int
	// Prefix names the guests: PREFIX-1 … PREFIX-COUNT.
	Prefix string
	// Guest is the create sent (its name is set for each): Start false unless it says.
	Guest api.CreateGuest
}

// Result is what the creates measured.
type Result struct {
	// Acknowledged is how many creates the API answered 201 or 202 (pending a node):
	// each recorded, and on as many management nodes as a write must be.
	Acknowledged int
	Pending      int // of those, answered pending
	// Failed counts the creates answered otherwise, by error.
	Failed  map[string]int
	Elapsed time.Duration
	// Latencies of the acknowledged creates, from send to answer.
	P50, P99, Max time.Duration
}

// PerSecond is acknowledged creates per second.
func (r Result) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Acknowledged) / r.Elapsed.Seconds()
}

func (r Result) String() string {
	s := fmt.Sprintf("%d creates acknowledged in %.2f s: %.0f/s, latency p50 %s p99 %s max %s (%d pending a node)",
		r.Acknowledged, r.Elapsed.Seconds(), r.PerSecond(), ms(r.P50), ms(r.P99), ms(r.Max), r.Pending)
	for e, n := range r.Failed {
		s += fmt.Sprintf("; %d failed: %s", n, e)
	}
	return s
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// Run makes opts.Count creates through c from opts.Clients clients at once. It lets
// c's transport keep a connection for each client, so that the figure is of writes,
// not of TLS handshakes. It returns when every create is answered or ctx ends.
func Run(ctx context.Context, c *api.Client, opts Options) (Result, error) {
	if opts.Clients < 1 || opts.Count < 1 || opts.Prefix == "" {
		return Result{}, errors.New("writeload: give clients, a count and a prefix")
	}
	if tr, ok := c.HTTP.Transport.(*http.Transport); ok {
		tr.MaxIdleConnsPerHost = max(tr.MaxIdleConnsPerHost, opts.Clients)
		tr.MaxIdleConns = max(tr.MaxIdleConns, opts.Clients)
	}
	var next atomic.Int64
	var mu sync.Mutex
	res := Result{Failed: map[string]int{}}
	var lat []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for range opts.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1)
				if i > int64(opts.Count) {
					return
				}
				req := opts.Guest
				req.Name = fmt.Sprintf("%s-%d", opts.Prefix, i)
				if req.Start == nil {
					req.Start = new(bool)
				}
				var g api.Guest
				sent := time.Now()
				err := c.Do(ctx, http.MethodPost, "/v1/guests", req, &g)
				took := time.Since(sent)
				mu.Lock()
				if err != nil {
					res.Failed[err.Error()]++
				} else {
					res.Acknowledged++
					if g.State == api.GuestPending {
						res.Pending++
					}
					lat = append(lat, took)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	if len(lat) > 0 {
		slices.Sort(lat)
		res.P50, res.P99, res.Max = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	}
	return res, ctx.Err()
}

// FromEnv reads the clients and the count from DVM_WRITES_CLIENTS and DVM_WRITES_COUNT,
// as scripts/bench-writes sets them; unset, they are the defaults given.
func FromEnv(clients, count int) (int, int, error) {
	var err error
	read := func(name string, def int) int {
		s := os.Getenv(name)
		if s == "" || err != nil {
			return def
		}
		n, perr := strconv.Atoi(s)
		if perr != nil || n < 1 {
			err = fmt.Errorf("%s=%q: give a whole number, 1 or more", name, s)
		}
		return n
	}
	clients, count = read("DVM_WRITES_CLIENTS", clients), read("DVM_WRITES_COUNT", count)
	return clients, count, err
}
