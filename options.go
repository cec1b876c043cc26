package raft

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
)

// Preset names a set of Raft timings tuned for a kind of network.
type Preset int

const (
	// PresetLocal suits members on one host or one LAN (round trips well under
	// a millisecond): heartbeat and election timeouts of 500ms, so a failed
	// leader is replaced in about a second, with room for a loaded machine's
	// scheduling pauses (shorter timeouts made leaders flap under load on two
	// cores).
	PresetLocal Preset = iota + 1
	// PresetRegional suits members in one region (round trips of a few to tens
	// of milliseconds). It is the default and matches hashicorp/raft's own
	// defaults: 1s heartbeat and election timeouts.
	PresetRegional
	// PresetGlobal suits members spread across continents (round trips of a
	// few hundred milliseconds): 3s timeouts, so a slow link is not mistaken
	// for a dead leader.
	PresetGlobal
)

// String returns the preset's name as the command line spells it.
func (p Preset) String() string {
	switch p {
	case PresetLocal:
		return "local"
	case PresetRegional:
		return "regional"
	case PresetGlobal:
		return "global"
	}
	return fmt.Sprintf("Preset(%d)", int(p))
}

// ParsePreset reads "local", "regional" or "global".
func ParsePreset(s string) (Preset, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "local":
		return PresetLocal, nil
	case "regional", "":
		return PresetRegional, nil
	case "global":
		return PresetGlobal, nil
	}
	return 0, fmt.Errorf("raft: unknown preset %q (want local, regional or global)", s)
}

// TimeoutConfig holds the Raft timings a preset sets. The fields mean what
// the fields of the same name in hashicorp/raft's Config mean.
type TimeoutConfig struct {
	// HeartbeatTimeout: how long a follower waits without hearing from the
	// leader before it starts an election.
	HeartbeatTimeout time.Duration
	// ElectionTimeout: how long a candidate waits for votes before it retries.
	ElectionTimeout time.Duration
	// CommitTimeout: the longest a follower waits to learn that entries it has
	// are committed. Kept small on every preset, because it bounds how stale a
	// follower's applied state can be when the cluster is idle.
	CommitTimeout time.Duration
	// LeaderLeaseTimeout: how long a leader keeps leading without reaching a
	// quorum. At most HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration
	// SnapshotInterval: how often Raft checks whether to snapshot.
	SnapshotInterval time.Duration
	// SnapshotThreshold: how many new log entries trigger a snapshot (which
	// then truncates the log).
	SnapshotThreshold uint64
}

// Timeouts returns the preset's timings.
func (p Preset) Timeouts() TimeoutConfig {
	switch p {
	case PresetLocal:
		return TimeoutConfig{
			HeartbeatTimeout:   500 * time.Millisecond,
			ElectionTimeout:    500 * time.Millisecond,
			CommitTimeout:      5 * time.Millisecond,
			LeaderLeaseTimeout: 250 * time.Millisecond,
			SnapshotInterval:   30 * time.Second,
			SnapshotThreshold:  8192,
		}
	case PresetGlobal:
		return TimeoutConfig{
			HeartbeatTimeout:   3 * time.Second,
			ElectionTimeout:    3 * time.Second,
			CommitTimeout:      50 * time.Millisecond,
			LeaderLeaseTimeout: 1500 * time.Millisecond,
			SnapshotInterval:   2 * time.Minute,
			SnapshotThreshold:  8192,
		}
	default:
		return TimeoutConfig{
			HeartbeatTimeout:   time.Second,
			ElectionTimeout:    time.Second,
			CommitTimeout:      20 * time.Millisecond,
			LeaderLeaseTimeout: 500 * time.Millisecond,
			SnapshotInterval:   2 * time.Minute,
			SnapshotThreshold:  8192,
		}
	}
}

// validate checks the set the way hashicorp's ValidateConfig does, and returns
// an error that names the field.
func (t TimeoutConfig) validate() error {
	c := hraft.DefaultConfig()
	c.LocalID = "validate"
	t.apply(c)
	if t.SnapshotThreshold == 0 {
		return errors.New("raft: SnapshotThreshold must be positive")
	}
	if err := hraft.ValidateConfig(c); err != nil {
		return fmt.Errorf("raft: invalid timeouts: %w", err)
	}
	return nil
}

func (t TimeoutConfig) apply(c *hraft.Config) {
	c.HeartbeatTimeout = t.HeartbeatTimeout
	c.ElectionTimeout = t.ElectionTimeout
	c.CommitTimeout = t.CommitTimeout
	c.LeaderLeaseTimeout = t.LeaderLeaseTimeout
	c.SnapshotInterval = t.SnapshotInterval
	c.SnapshotThreshold = t.SnapshotThreshold
}

// Defaults of the options.
const (
	// DefaultBootstrapTimeout is how long a new member looks for peers before
	// it decides whether to bootstrap or join.
	DefaultBootstrapTimeout = 10 * time.Second
	// DefaultBootstrapThreshold is the share of the bootstrap window within
	// which a peer must be first seen to count as a founder.
	DefaultBootstrapThreshold = 0.8
	// SnapshotRetain is how many snapshots are kept on disk.
	SnapshotRetain = 3
	// DefaultMaxVoters is how many members vote unless WithMaxVoters says
	// otherwise: five survive two failures, and a write waits for three.
	DefaultMaxVoters = 5
	// MaxMaxVoters is the largest voter cap WithMaxVoters takes: past it a
	// quorum costs more than it protects, and peer exchange lists every
	// voter.
	MaxMaxVoters = maxStatusVoters - 1
)

// config is what the options set.
type config struct {
	preset             Preset
	timeouts           TimeoutConfig
	customTimeouts     bool
	bootstrapTimeout   time.Duration
	bootstrapThreshold float64
	forceBootstrap     bool
	maxVoters          int
	autopilot          AutopilotConfig // resolved by New (autopilot.go)
	key                []byte
	snapshotDir        string
	logger             hclog.Logger
	bootstrapProgress  func(BootstrapProgress) // WithBootstrapProgress (bootstrap_progress.go)
	metrics            prometheus.Registerer   // WithMetrics; nil: none
	// kinds, when set (tests only), replaces the operation kinds this
	// member advertises, to play a member of an older build.
	kinds        []uint8
	watchHistory historyLimits // WithWatchHistory (watch.go); zero: the defaults
	// noClaims (tests only) makes a member neither send nor heed founder
	// claims (bootstrap.go), to reproduce the races they prevent.
	noClaims bool
	// clock, when set (tests only), replaces the wall clock the leader
	// stamps commands with (see withClock).
	clock func() time.Time
}

func defaultConfig() *config {
	return &config{
		preset:             PresetRegional,
		timeouts:           PresetRegional.Timeouts(),
		bootstrapTimeout:   DefaultBootstrapTimeout,
		bootstrapThreshold: DefaultBootstrapThreshold,
		maxVoters:          DefaultMaxVoters,
	}
}

// Option configures New. An invalid value makes New fail with an error that
// says which option was wrong.
type Option func(*config) error

// WithTimeoutPreset sets the Raft timings from a preset (PresetRegional by
// default). A later WithTimeouts overrides it.
func WithTimeoutPreset(p Preset) Option {
	return func(c *config) error {
		if p != PresetLocal && p != PresetRegional && p != PresetGlobal {
			return fmt.Errorf("raft: WithTimeoutPreset: unknown preset %d", int(p))
		}
		c.preset = p
		if !c.customTimeouts {
			c.timeouts = p.Timeouts()
		}
		return nil
	}
}

// WithTimeouts sets every Raft timing explicitly. The set is validated as
// hashicorp/raft validates its Config (for example LeaderLeaseTimeout may not
// exceed HeartbeatTimeout).
func WithTimeouts(t TimeoutConfig) Option {
	return func(c *config) error {
		if err := t.validate(); err != nil {
			return fmt.Errorf("WithTimeouts: %w", err)
		}
		c.timeouts = t
		c.customTimeouts = true
		return nil
	}
}

// WithBootstrapTimeout sets how long a starting member discovers peers before
// it decides (default 10s). Longer windows tolerate slower discovery; shorter
// ones form clusters sooner.
func WithBootstrapTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 || d > 10*time.Minute {
			return fmt.Errorf("raft: WithBootstrapTimeout: %v is outside (0, 10m]", d)
		}
		c.bootstrapTimeout = d
		return nil
	}
}

// WithBootstrapThreshold sets the founder cutoff as a share of the bootstrap
// window, in (0, 1] (default 0.8): peers first seen before threshold × timeout
// are founders, later ones are late joiners.
func WithBootstrapThreshold(f float64) Option {
	return func(c *config) error {
		if !(f > 0 && f <= 1) {
			return fmt.Errorf("raft: WithBootstrapThreshold: %v is outside (0, 1]", f)
		}
		c.bootstrapThreshold = f
		return nil
	}
}

// WithForceBootstrap makes a member with no Raft state bootstrap a cluster of
// itself at once, without looking for peers. Use it only when this node
// really must start a new cluster; others then join it.
func WithForceBootstrap() Option {
	return func(c *config) error {
		c.forceBootstrap = true
		return nil
	}
}

// WithMaxVoters caps the namespace's voters at n (default
// DefaultMaxVoters): odd, so that no size wastes a member on a tie, from 1
// to MaxMaxVoters. Members beyond the cap join as non-voters: they
// replicate everything, forward writes and serve barrier reads, and one is
// promoted when a voter goes away (see autopilot in the README). Every
// member of a namespace should use the same cap; the leader's decides.
func WithMaxVoters(n int) Option {
	return func(c *config) error {
		if n < 1 || n > MaxMaxVoters || n%2 == 0 {
			return fmt.Errorf("raft: WithMaxVoters: %d is not an odd number from 1 to %d", n, MaxMaxVoters)
		}
		c.maxVoters = n
		return nil
	}
}

// WithAutopilot sets how the leader replaces, demotes and removes members
// that went away (see AutopilotConfig and autopilot in the README). Zero
// fields take their defaults; New checks the set against the timeouts and
// the voter cap.
func WithAutopilot(a AutopilotConfig) Option {
	return func(c *config) error {
		if a.DeadAfter < 0 || a.RemoveAfter < 0 || a.MinQuorum < 0 {
			return fmt.Errorf("raft: WithAutopilot: negative setting in %+v", a)
		}
		c.autopilot = a
		return nil
	}
}

// WithEncryptionKey turns on AES-256-GCM for the Raft transport and for every
// command, with keys derived from this shared secret (at least MinKeySize
// bytes). Every member and client of the namespace must use the same key.
func WithEncryptionKey(key []byte) Option {
	return func(c *config) error {
		if len(key) < MinKeySize {
			return fmt.Errorf("WithEncryptionKey: %w (got %d bytes)", ErrKeyTooShort, len(key))
		}
		c.key = append([]byte(nil), key...)
		return nil
	}
}

// WithSnapshotDir sets the parent directory of the snapshot store. The
// snapshots of a cluster go into a subdirectory named for the namespace and
// the peer ID, so several namespaces and identities can share the parent.
// Default: os.TempDir()/tau-raft-snapshots.
func WithSnapshotDir(dir string) Option {
	return func(c *config) error {
		if strings.TrimSpace(dir) == "" {
			return errors.New("raft: WithSnapshotDir: empty directory")
		}
		c.snapshotDir = dir
		return nil
	}
}

// WithLogger routes every log line of the cluster, Raft's own included, to l.
// Without it the cluster logs warnings and errors to stderr only.
func WithLogger(l hclog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("raft: WithLogger: nil logger")
		}
		c.logger = l
		return nil
	}
}

// WithMetrics registers the cluster's Prometheus metrics on reg (see
// "Metrics and health" in the README for the series): nothing goes to a
// global registry. Every series carries the labels namespace and member
// (this node's peer ID), so several clusters can share reg; Close removes
// the cluster's series. Without it nothing is measured.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(c *config) error {
		if reg == nil {
			return errors.New("raft: WithMetrics: nil registerer")
		}
		c.metrics = reg
		return nil
	}
}

// snapshotPath is where a cluster keeps its snapshots: scoped by namespace and
// peer ID so that two nodes, or two identities over time, never share one.
func (c *config) snapshotPath(namespace string, id peer.ID) string {
	base := c.snapshotDir
	if base == "" {
		base = filepath.Join(os.TempDir(), "tau-raft-snapshots")
	}
	// PathEscape keeps distinct namespaces in distinct directories ("/raft/a/b"
	// and "/raft/a_b" must not meet) and turns each into one path element.
	return filepath.Join(base, url.PathEscape(namespace), id.String())
}
