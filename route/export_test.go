package route

// MatchLinear is the reference matcher: a plain first-match scan without
// the path index.
func (vh *VirtualHost) MatchLinear(req *Request) *Rule {
	path := req.Path
	if path == "" {
		path = "/"
	}
	pnq, rq := splitQuery(path)
	for _, r := range vh.Rules {
		if r.Match == nil || r.m.matches(req, path, pnq, rq, vh.scratch) {
			return r
		}
	}
	return nil
}
