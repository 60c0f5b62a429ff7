package api

// Imbalance is how unevenly the nodes that take guests are used: the most used (Hot) and
// the least used (Cold) by dominant share, the larger of a node's CPU and memory shares in
// use (0 to 1), and Spread, the difference, which a rebalance narrows.
type Imbalance struct {
	Hot       string  `json:"hot,omitempty"`
	HotShare  float64 `json:"hot_share"`
	Cold      string  `json:"cold,omitempty"`
	ColdShare float64 `json:"cold_share"`
	Spread    float64 `json:"spread"`
}

// RebalanceMove is one live migration of a rebalance plan.
type RebalanceMove struct {
	Guest       string `json:"guest"`
	From        string `json:"from"`
	To          string `json:"to"`
	CPUs        int    `json:"cpus"`
	MemoryBytes int64  `json:"memory_bytes"`
}

// RebalancePlan is GET /v1/cluster/rebalance's answer: the moves a rebalance would make
// now, and the imbalance before and after them. Guests that cannot move live now (stopped,
// not running yet, twins, migrating, on a node that is draining, lost or silent) are
// never in it.
type RebalancePlan struct {
	Moves  []RebalanceMove `json:"moves"`
	Before Imbalance       `json:"before"`
	After  Imbalance       `json:"after"`
	// Staying counts the guests on nodes that take guests that the plan may not move,
	// by why.
	Staying map[string]int `json:"staying,omitempty"`
}

// RebalanceProgress is one line of POST /v1/cluster/rebalance's answer
// (newline-delimited JSON): the plan first (Plan set), then a line per move, moved or
// failed; the last line has Done set, the totals and the imbalance after.
type RebalanceProgress struct {
	Plan  *RebalancePlan `json:"plan,omitempty"`
	Guest string         `json:"guest,omitempty"`
	From  string         `json:"from,omitempty"`
	To    string         `json:"to,omitempty"`
	MoveOutcome
	After *Imbalance `json:"after,omitempty"`
	// Unacknowledged: the moves are made, but the state that records them is not yet
	// on enough management nodes (see Error); look before you run it again.
	Unacknowledged bool `json:"unacknowledged,omitempty"`
}
