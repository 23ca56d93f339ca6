//! Projects.

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::groups::SharedWithGroup;
use crate::client::{Client, IdOrPath, LimitClass, ListSpec, PageItem, Request, Resume};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectNamespace {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// `group` or `user`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub full_path: Option<String>,
    #[serde(default)]
    pub parent_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: String,
    pub path_with_namespace: String,
    pub namespace: ProjectNamespace,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
    #[serde(default)]
    pub shared_with_groups: Vec<SharedWithGroup>,
}

impl PageItem for Project {
    fn page_id(&self) -> Option<u64> {
        Some(self.id)
    }
}

/// Filters for `GET /projects`.
#[derive(Debug, Clone, Default)]
pub struct ProjectsQuery {
    /// Only projects the token's user is a member of.
    pub membership: bool,
    pub archived: Option<bool>,
}

impl Client {
    /// `GET /projects/:id`.
    pub async fn project(&self, project: &IdOrPath) -> Result<Project, Error> {
        self.get_json(
            Request::get("/projects/:id", format!("/projects/{}", project.segment()))
                .limited(LimitClass::ProjectGet, 0),
        )
        .await
    }

    /// `GET /projects` with keyset pagination (`order_by=id` is the only keyset order).
    pub fn projects(&self, query: &ProjectsQuery) -> BoxStream<'static, Result<Project, Error>> {
        let mut req = Request::get("/projects", "/projects").limited(LimitClass::ProjectsList, 0);
        if query.membership {
            req = req.query("membership", "true");
        }
        if let Some(a) = query.archived {
            req = req.query("archived", a);
        }
        crate::client::items_stream(self, ListSpec::keyset(req, Resume::IdAfter))
    }

    /// `GET /projects` with offset pagination; switches to keyset at GitLab's offset cap.
    pub fn projects_offset(
        &self,
        query: &ProjectsQuery,
    ) -> BoxStream<'static, Result<Project, Error>> {
        let mut req = Request::get("/projects", "/projects")
            .query("order_by", "id")
            .query("sort", "asc")
            .limited(LimitClass::ProjectsList, 0);
        if query.membership {
            req = req.query("membership", "true");
        }
        let mut spec = ListSpec::offset(req);
        spec.keyset = Some(Resume::IdAfter);
        crate::client::items_stream(self, spec)
    }
}
